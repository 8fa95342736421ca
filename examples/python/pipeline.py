"""The paper's pipeline in Python: bundled diffusion model -> block features -> linear probe.
Run from the repository root: python3 examples/python/pipeline.py [N_TRAIN] [N_TEST]"""
import sys

import diffprobe as dp

n_train, n_test = (int(a) for a in (sys.argv[1:] + ["2000", "1000"])[:2])
data = "/usr/share/datasets/fashion-mnist/"  # Debian's dataset-fashion-mnist
model = dp.UNet.load("models/fmnist_default.safetensors")
fx = dp.FeatureExtractor(model, timesteps=[10], blocks=[9], pool="avg:8", noise_seed=0, batch_size=64)
C, S = model.config.in_channels, model.config.image_size
train = dp.open_dataset(data + "train-images-idx3-ubyte.gz", data + "train-labels-idx1-ubyte.gz",
                        channels=C, size=S, limit=n_train)
test = dp.open_dataset(data + "t10k-images-idx3-ubyte.gz", data + "t10k-labels-idx1-ubyte.gz",
                       channels=C, size=S, limit=n_test)
x_train = fx.extract(train.images())[10, 9].reshape(n_train, -1)  # [N, C*8*8]
x_test = fx.extract(test.images())[10, 9].reshape(n_test, -1)
head = dp.Head.linear(x_train.shape, train.num_classes)
head.fit(x_train, train.labels(), optimizer="adamw", lr=1e-3, schedule="cosine", epochs=30, standardize=True)
report = head.evaluate(x_test, test.labels())
print(f"t=10 block 9 avg:8 ({x_train.shape[1]} features), {n_train} training images: "
      f"linear probe top-1 {100 * report.top1:.2f}% on {n_test} test images")
