"""No leak across the boundary: 1,000 small calls leave the resident set where it was."""
import gc

import numpy as np

import diffprobe as dp
from conftest import rss_kb


def test_rss_stable_over_1000_calls(model, fmnist):
    fx = dp.FeatureExtractor(model, timesteps=[10], blocks=[2], pool="avg:2", threads=1)
    pool = dp.Pooler("gap")
    x = fmnist["images"][:2]
    xf = dp.preprocess(x, 1, 32)

    def calls(n):
        for i in range(n):
            f = fx.extract(xf if i % 2 else x)[10, 2]
            p = pool(np.ascontiguousarray(f))
            t = dp.as_tensor(p)
            np.asarray(t).sum()
            t.__dlpack__()  # an unconsumed capsule frees its tensor

    calls(200)  # warm-up: allocator caches, memory plan
    gc.collect()
    before = rss_kb()
    calls(1000)
    gc.collect()
    after = rss_kb()
    print(f"RSS {before} kB -> {after} kB over 1,000 calls")
    # One call's output is ~1 kB; a leak of it (or of the input, 8 kB) would add > 1 MB.
    assert after - before < 1024, (before, after)
