"""diffprobe: features of ADM diffusion U-Nets for linear probes, from NumPy and PyTorch.

A thin binding of the C++ library (the same engine as the `diffprobe` command):

    import diffprobe as dp
    model = dp.UNet.load("models/fmnist_default.safetensors")
    fx = dp.FeatureExtractor(model, timesteps=[10], blocks=[9], pool="avg:8", noise_seed=0)
    feats = fx.extract(images)            # {(10, 9): float32 [N, D]}, NumPy views of C++ memory
    head = dp.Head.linear(feats[10, 9].shape, 10)
    head.fit(feats[10, 9], labels, dp.TrainConfig(epochs=30, optimizer="adamw", lr=1e-3))

Arrays cross the boundary without copies (buffer protocol; DLPack through the .base Tensor or
NumPy's own __dlpack__, so torch.from_dlpack works); long calls release the GIL and stop on
Ctrl-C. Errors are diffprobe.Error subclasses mirroring the C++ hierarchy. See docs/python.md.
"""
from ._diffprobe import *  # noqa: F401,F403
from ._diffprobe import __version__  # noqa: F401
from ._diffprobe import _time_extract_cpp  # noqa: F401

ERRORS = (
    Error,  # noqa: F405
    ShapeError,  # noqa: F405
    DTypeError,  # noqa: F405
    DeviceError,  # noqa: F405
    IoError,  # noqa: F405
    FormatError,  # noqa: F405
    ConfigError,  # noqa: F405
    ArgumentError,  # noqa: F405
    NumericError,  # noqa: F405
    UnsupportedError,  # noqa: F405
    CancelledError,  # noqa: F405
)
