"""The GIL is released during extraction: while one thread extracts, another thread keeps running
Python code. Timing-based checks (two extractions in parallel vs one) fail on a busy machine; this
one looks at the longest pause of a Python loop during a long extraction, which a held GIL would
make as long as the extraction itself."""
import threading
import time

import numpy as np

import diffprobe as dp


def test_python_runs_while_another_thread_extracts(model):
    x = np.random.default_rng(0).uniform(-1, 1, (64, 1, 32, 32)).astype(np.float32)
    fx = dp.FeatureExtractor(model, timesteps=[10, 100], blocks=[12], batch_size=64, threads=1)
    fx.extract(x[:4])  # warm-up: memory plan, prepared weights
    done = threading.Event()
    took = []

    def work():
        t0 = time.perf_counter()
        fx.extract(x)  # one forward pass of 128 images: one long call into C++
        took.append(time.perf_counter() - t0)
        done.set()

    t = threading.Thread(target=work)
    ticks = []
    t.start()
    while not done.is_set():
        ticks.append(time.perf_counter())
        sum(range(200))  # pure Python work, needs the GIL
    t.join()
    gaps = np.diff(ticks)
    longest = float(gaps.max()) if len(gaps) else float("inf")
    print(f"extraction {took[0]:.3f} s, {len(ticks)} Python iterations meanwhile, longest pause {longest:.4f} s")
    # A held GIL: no iterations during the call (one pause as long as the extraction). Released:
    # thousands of iterations, pauses of scheduler size (ms) even on a busy machine.
    assert len(ticks) > 100
    assert longest < 0.5 * took[0], (longest, took[0])
