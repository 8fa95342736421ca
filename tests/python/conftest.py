"""Fixtures of the Python module's tests (run by ctest with PYTHONPATH=<build>/python, or by hand:
PYTHONPATH=build/python /usr/bin/python3 -m pytest tests/python)."""
import gzip
import os
import pathlib

import numpy as np
import pytest

import diffprobe as dp

ROOT = pathlib.Path(__file__).resolve().parents[2]
MODEL = ROOT / "models" / "fmnist_default.safetensors"
FMNIST = pathlib.Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(scope="session")
def model_path():
    return MODEL


@pytest.fixture(scope="session")
def model():
    return dp.UNet.load(MODEL)


@pytest.fixture(scope="session")
def fmnist():
    """Test images [N, 28, 28] uint8 and labels, the IDX files' paths (first 256 samples)."""
    images = FMNIST / "t10k-images-idx3-ubyte.gz"
    labels = FMNIST / "t10k-labels-idx1-ubyte.gz"
    if not images.exists():
        pytest.skip("Fashion-MNIST is not installed (bash scripts/setup.sh: dataset-fashion-mnist)")
    with gzip.open(images) as f:
        x = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)[:256].copy()
    with gzip.open(labels) as f:
        y = np.frombuffer(f.read(), np.uint8, offset=8)[:256].astype(np.int64)
    return {"images": x, "labels": y, "images_path": images, "labels_path": labels}


@pytest.fixture(scope="session")
def cli():
    exe = os.environ.get("DIFFPROBE_CLI")
    if not exe or not pathlib.Path(exe).exists():
        pytest.skip("DIFFPROBE_CLI is not set to the built diffprobe tool")
    return exe


def rss_kb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0
