"""The binding's contract: zero-copy arrays with correct lifetimes, DLPack, errors, configs, heads."""
import gc
import pathlib
import signal
import threading

import numpy as np
import pytest

import diffprobe as dp


def address(a):
    return a.__array_interface__["data"][0]


def test_returned_arrays_are_views_owned_by_a_tensor(model, fmnist):
    fx = dp.FeatureExtractor(model, timesteps=[10], blocks=[9], pool="avg:2")
    f = fx.extract(fmnist["images"][:8])[10, 9]
    assert isinstance(f.base, dp.Tensor)
    assert f.base.data_ptr == address(f)  # the C++ tensor's memory, not a copy
    assert np.shares_memory(f, np.asarray(f.base))
    assert address(np.asarray(f.base)) == address(f)
    # The array keeps the storage alive after everything else is gone.
    want = f.copy()
    del fx
    gc.collect()
    assert np.array_equal(f, want)


def test_contiguous_inputs_are_not_copied():
    a = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    t = dp.as_tensor(a)
    assert t.data_ptr == address(a) and t.shape == (2, 3, 4) and t.dtype == "float32"
    v = np.asarray(t)
    assert np.shares_memory(v, a)
    v[0, 0, 0] = 42  # one memory
    assert a[0, 0, 0] == 42
    del a, v
    gc.collect()
    assert np.asarray(t)[0, 0, 1] == 1  # the tensor keeps the array alive
    # The pooler reads its input in place and returns a view of its result.
    feats = np.random.default_rng(0).standard_normal((3, 4, 8, 8)).astype(np.float32)
    p = dp.Pooler("avg:2").pool(feats)
    assert p.shape == (3, 4, 2, 2) and p.base.data_ptr == address(p)
    np.testing.assert_allclose(p, feats.reshape(3, 4, 2, 4, 2, 4).mean(axis=(3, 5)), rtol=1e-5, atol=1e-6)


def test_forward_returns_strided_views_of_nhwc_activations(model):
    x = np.zeros((2, 1, 32, 32), np.float32)
    out = model.forward(x, np.full(2, 10, np.float32), blocks=[3], threads=1)[3]
    assert out.base.layout == "NHWC" and not out.flags["C_CONTIGUOUS"]
    assert out.shape == model.block_output_shape(3, 2)
    assert out.strides[1] == 4  # channels innermost


def test_dlpack_to_torch():
    torch = pytest.importorskip("torch")
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    t = dp.as_tensor(a)
    assert t.__dlpack_device__() == (1, 0)
    th = torch.from_dlpack(t)
    assert th.data_ptr() == address(a) and th.shape == (3, 4)
    th[1, 1] = -1
    assert a[1, 1] == -1
    # bf16 feature files come out through DLPack without conversion.
    # NumPy's own __dlpack__ works on every returned array as well.
    assert torch.from_dlpack(np.asarray(t)).data_ptr() == address(a)
    del t, a
    gc.collect()
    assert th[2, 3].item() == 11.0  # torch holds the memory through the capsule's deleter


def test_dlpack_bf16(model, fmnist, tmp_path):
    torch = pytest.importorskip("torch")
    fx = dp.FeatureExtractor(model, timesteps=[10], blocks=[3], pool="gap")
    f = fx.extract(fmnist["images"][:4])
    p = tmp_path / "bf16.safetensors"
    dp.save_features(p, f, store="bf16")
    ff = dp.FeatureFile.open(p)
    t = ff.tensor("t10.b3")
    assert t.dtype == "bfloat16"
    th = torch.from_dlpack(t)
    assert th.dtype == torch.bfloat16 and th.data_ptr() == t.data_ptr
    np.testing.assert_array_equal(th.float().numpy(), ff["t10.b3"])
    bits = np.asarray(t)  # the buffer protocol has no bf16: its raw 16-bit patterns
    assert bits.dtype == np.uint16 and bits.ctypes.data == t.data_ptr
    np.testing.assert_array_equal((bits.astype(np.uint32) << 16).view(np.float32), ff["t10.b3"])


def test_wrong_inputs_raise_shape_error(model):
    fx = dp.FeatureExtractor(model, timesteps=[10], blocks=[3])
    for bad in (np.zeros((2, 3, 32, 32), np.float32),  # channels
                np.zeros((2, 1, 28, 28), np.float32),  # size
                np.zeros((1, 32, 32), np.float32),  # rank
                np.zeros((2, 1, 32, 32), np.float64),  # dtype
                np.zeros((2, 1, 32, 32), np.int32),
                np.zeros((2, 1, 32, 64), np.float32)[:, :, :, ::2]):  # not contiguous
        with pytest.raises(dp.ShapeError) as e:
            fx.extract(bad)
        assert "[N, 1, 32, 32]" in str(e.value) or "contiguous" in str(e.value)
        assert isinstance(e.value, dp.Error) and isinstance(e.value, ValueError)
        assert e.value.kind == "shape" or e.value.kind.lower().startswith("shape")


def test_error_hierarchy(model, tmp_path):
    assert issubclass(dp.ShapeError, dp.Error) and issubclass(dp.CancelledError, dp.Error)
    with pytest.raises(dp.IoError) as e:
        dp.UNet.load(tmp_path / "missing.safetensors")
    assert isinstance(e.value, OSError) and e.value.where
    with pytest.raises(dp.ArgumentError):
        dp.FeatureExtractor(model, timesteps=[10], blocks=[99])
    with pytest.raises(dp.ConfigError):
        dp.UNetConfig(not_a_flag=1)
    (tmp_path / "junk.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{junk}")
    with pytest.raises(dp.FormatError):
        dp.FeatureFile.open(tmp_path / "junk.safetensors")


def test_config_and_model(model):
    assert "fmnist_default" in dp.UNetConfig.preset_names()
    c = dp.UNetConfig.preset("fmnist_default")
    assert model.config == c and c.num_blocks == model.num_blocks
    d = dp.UNetConfig(image_size=32, num_channels=64, in_channels=1, attention_resolutions="16")
    assert d.image_size == 32 and d.to_dict()["num_channels"] == 64
    r = dp.UNet.random(dp.UNetConfig(**c.to_dict()), seed=1)
    assert r.num_parameters == model.num_parameters
    assert [b.block for b in model.block_infos()][-1] == 0
    m2 = dp.UNet.load(pathlib.Path(__file__).resolve().parents[2] / "models/fmnist_default.safetensors",
                      preset="fmnist_default")
    assert m2.config == c


def test_load_without_mmap_gives_the_same_model(model, model_path, fmnist):
    read = dp.UNet.load(model_path, mmap=False)
    x = fmnist["images"][:2]
    a = dp.FeatureExtractor(model, timesteps=[10], blocks=[5], pool="gap").extract(x)[10, 5]
    b = dp.FeatureExtractor(read, timesteps=[10], blocks=[5], pool="gap").extract(x)[10, 5]
    assert (a == b).all()


def test_extractor_keeps_model_alive(model_path, fmnist):
    fx = dp.FeatureExtractor(dp.UNet.load(model_path), timesteps=[10], blocks=[3], pool="gap")
    gc.collect()
    assert fx.extract(fmnist["images"][:2])[10, 3].shape == (2, fx.feature_shape(10, 3)[1], 1, 1)


def test_head_fit_evaluate_predict_save_load(model, fmnist, tmp_path):
    fx = dp.FeatureExtractor(model, timesteps=[10], blocks=[9], pool="avg:2", threads=2)
    x = fx.extract(fmnist["images"][:192])[10, 9].reshape(192, -1)
    y = fmnist["labels"][:192]
    head = dp.Head.linear(x.shape, 10)
    epochs = []
    hist = head.fit(x[:128], y[:128], dp.TrainConfig(epochs=6, optimizer="adamw", lr=1e-2, schedule="cosine",
                                                      standardize=True, batch_size=16), on_epoch=epochs.append)
    assert len(hist.epochs) == 6 and len(epochs) == 6
    rep = head.evaluate(x[128:], y[128:])
    assert rep.count == 64 and rep.top1 > 0.4 and rep.confusion.shape == (10, 10)
    pred = head.predict(x[128:])
    assert pred.dtype == np.int64 and np.mean(pred == y[128:]) == pytest.approx(rep.top1)
    logits = head.logits(x[128:])
    assert logits.shape == (64, 10) and np.array_equal(np.argmax(logits, 1), pred)
    head.metadata = {"feature": "t10.b9"}
    head.save(tmp_path / "head.safetensors")
    back = dp.Head.load(tmp_path / "head.safetensors")
    assert back.metadata["feature"] == "t10.b9" and back.kind == "linear"
    assert np.array_equal(back.logits(x[128:]), logits)
    # The same training from FeatureRows (read from disk) gives the same head.
    p = tmp_path / "f.safetensors"
    dp.save_features(p, {(10, 9): x[:128]}, labels=y[:128])
    h2 = dp.Head.linear(x.shape, 10)
    h2.fit(dp.FeatureRows.open(p, "t10.b9"), y[:128], dp.TrainConfig(epochs=6, optimizer="adamw", lr=1e-2,
                                                                        schedule="cosine", standardize=True,
                                                                        batch_size=16))
    assert np.array_equal(h2.logits(x[128:]), logits)
    with pytest.raises(dp.ConfigError):
        head.fit(x, y, not_an_option=1)


def test_keyboard_interrupt_stops_extraction(model):
    """SIGINT during a GIL-free extract: KeyboardInterrupt after the current batch, not at the end."""
    fx = dp.FeatureExtractor(model, timesteps=[10], blocks=[0], batch_size=4, threads=2)
    x = np.zeros((4000, 1, 32, 32), np.float32)  # ~40 s uninterrupted
    timer = threading.Timer(0.5, signal.raise_signal, args=(signal.SIGINT,))
    import time
    t0 = time.perf_counter()
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        fx.extract(x)
    assert time.perf_counter() - t0 < 10
    timer.cancel()


def test_int8_calibration_recorded_saved_and_applied(model_path, fmnist, tmp_path):
    net = dp.UNet.load(model_path)  # its own model: the calibration below is set on it
    x = fmnist["images"][:8]
    fp32 = dp.FeatureExtractor(net, timesteps=[10], blocks=[9], pool="avg:2").extract(x)[10, 9]
    try:
        per_image = dp.FeatureExtractor(net, timesteps=[10], blocks=[9], pool="avg:2",
                                        precision="int8").extract(x)[10, 9]
    except dp.UnsupportedError as e:
        pytest.skip(f"no int8 on this CPU: {e}")
    assert len(net.int8_convolutions) == 74 and "input_blocks.0.0" not in net.int8_convolutions
    with dp.Int8CalibrationRecorder(net) as rec:
        dp.FeatureExtractor(net, timesteps=[10], blocks=[9]).extract(fmnist["images"][100:132])
        assert rec.images_seen == 32
        n = rec.save(tmp_path / "cal.json", method="max", timesteps=[10])
    assert 0 < n < 74  # the convolutions of blocks 2-9 only
    with pytest.raises(dp.ArgumentError):
        rec.save(tmp_path / "again.json")  # closed
    assert net.int8_calibration is None
    net.set_int8_calibration(tmp_path / "cal.json")
    assert '"format": "diffprobe.int8_calibration"' in net.int8_calibration
    calibrated = dp.FeatureExtractor(net, timesteps=[10], blocks=[9], pool="avg:2",
                                     precision="int8").extract(x)[10, 9]
    net.clear_int8_calibration()
    for f in (per_image, calibrated):
        a, b = f.reshape(8, -1).astype(np.float64), fp32.reshape(8, -1).astype(np.float64)
        cos = (a * b).sum(1) / np.sqrt((a * a).sum(1) * (b * b).sum(1))
        assert cos.min() > 0.995, cos
    assert not (per_image == calibrated).all()
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(dp.FormatError):
        net.set_int8_calibration(tmp_path / "bad.json")
