"""diffprobe's features against the official-structure PyTorch U-Net (tests/reference/adm_unet.py,
which follows guided-diffusion's unet.py module for module) on the same weights and the same x_t.
Run from the repository root: python3 examples/python/compare_torch.py [N]"""
import pathlib
import sys

import numpy as np
import torch

import diffprobe as dp

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "reference"))
import adm_unet  # noqa: E402

n = int(sys.argv[1]) if len(sys.argv) > 1 else 8
weights = ROOT / "models" / "fmnist_default.safetensors"
model = dp.UNet.load(weights)
cfg = model.config

# The same weights in PyTorch.
ref = adm_unet.build_unet(adm_unet.UNetConfig(cfg.to_dict())).eval()
state, _ = adm_unet.load_safetensors(str(weights))
ref.load_state_dict(state)

# The same noisy inputs: x0 from Fashion-MNIST, eps given to both (NoiseMode::Given).
test = dp.open_dataset("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz", channels=cfg.in_channels,
                       size=cfg.image_size, limit=n)
x0 = test.images()
eps = np.random.default_rng(0).standard_normal(x0.shape).astype(np.float32)
t, blocks = 50, [3, 9, 12, 0]
fx = dp.FeatureExtractor(model, timesteps=[t], blocks=blocks, noise="given", threads=2)
ours = fx.extract(x0, eps=eps)

_, abar = adm_unet.noise_schedule(cfg.noise_schedule, cfg.diffusion_steps)
with torch.no_grad():
    x_t = adm_unet.q_sample(torch.from_numpy(x0), t, torch.from_numpy(eps), abar)
    theirs = ref.forward_blocks(x_t, torch.full((n,), float(t)), None, blocks)

print(f"{n} images, t={t}: diffprobe (C++, fp32) vs the PyTorch reference (fp32) on the same weights")
print(f"{'block':>5} {'shape':>18} {'max |diff|':>11} {'rel. error':>11}")
for b in blocks:
    a, r = ours[t, b], theirs[b].numpy()
    err = np.abs(a - r).max()
    print(f"{b:>5} {str(a.shape):>18} {err:11.2e} {err / np.abs(r).max():11.2e}")
    assert np.allclose(a, r, rtol=1e-3, atol=1e-3 * np.abs(r).max()), b
print("features agree (max error relative to the largest activation below 1e-3)")
