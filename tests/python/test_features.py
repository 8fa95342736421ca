"""Python features equal the C++ library's (diffprobe extract, run_extraction) bit for bit."""
import subprocess

import numpy as np
import pytest

import diffprobe as dp

T, BLOCKS, POOL, N = [10, 50], [3, 9], "avg:2", 40


def cli_extract(cli, model_path, fmnist, out, pool=POOL):
    subprocess.run([cli, "extract", "--weights", str(model_path), "--input", str(fmnist["images_path"]),
                    "--labels", str(fmnist["labels_path"]), "--t", ",".join(map(str, T)),
                    "--blocks", ",".join(map(str, BLOCKS)), "--pool", pool, "--noise-seed", "3",
                    "--limit", str(N), "--batch", "16", "--threads", "2", "--out", str(out)],
                   check=True, capture_output=True)


def test_extract_equals_cli(cli, model, model_path, fmnist, tmp_path):
    out = tmp_path / "cli.safetensors"
    cli_extract(cli, model_path, fmnist, out)
    ff = dp.FeatureFile.open(out)
    assert ff.size == N and sorted(ff.names) == sorted(dp.feature_name(t, b) for t in T for b in BLOCKS)
    np.testing.assert_array_equal(ff.labels(), fmnist["labels"][:N])
    fx = dp.FeatureExtractor(model, timesteps=T, blocks=BLOCKS, pool=POOL, noise_seed=3, threads=2)
    # uint8 images through the library's preprocessing (the IDX rule: pad 28 -> 32) ...
    from_uint8 = fx.extract(fmnist["images"][:N])
    # ... and float32 model inputs read by the library's own IDX data set, in two chunks.
    ds = dp.open_dataset(fmnist["images_path"], fmnist["labels_path"], channels=1, size=32, limit=N)
    x = ds.images(0, N)
    np.testing.assert_array_equal(x, dp.preprocess(fmnist["images"][:N], 1, 32))
    first = fx.extract(x[:24])
    second = fx.extract(x[24:], first_index=24)
    for t in T:
        for b in BLOCKS:
            want = ff[t, b]
            assert want.dtype == np.float32 and from_uint8[t, b].shape == want.shape
            assert np.array_equal(from_uint8[t, b], want), (t, b)  # bit for bit
            assert np.array_equal(np.concatenate([first[t, b], second[t, b]]), want), (t, b)


def test_run_extraction_file_is_byte_identical_to_cli(cli, model, model_path, fmnist, tmp_path):
    ref = tmp_path / "cli.safetensors"
    cli_extract(cli, model_path, fmnist, ref)
    fx = dp.FeatureExtractor(model, timesteps=T, blocks=BLOCKS, pool=POOL, noise_seed=3, threads=2)
    seen = []
    out = tmp_path / "py.safetensors"
    r = dp.run_extraction(fx, str(fmnist["images_path"]), out, labels=str(fmnist["labels_path"]), limit=N,
                          weights=model_path, progress=lambda p: seen.append(p.rows_done))
    assert r.complete and r.rows_computed == N and seen and seen[-1] == N
    assert out.read_bytes() == ref.read_bytes()
    # From a NumPy array: the same features (the metadata describes the array instead).
    out2 = tmp_path / "array.safetensors"
    dp.run_extraction(fx, fmnist["images"][:N], out2, labels=fmnist["labels"][:N])
    a, b = dp.FeatureFile.open(out2), dp.FeatureFile.open(ref)
    for name in b.names:
        assert np.array_equal(a[name], b[name])
    np.testing.assert_array_equal(a.labels(), b.labels())


def test_run_extraction_cancel_and_resume(model, fmnist, tmp_path):
    fx = dp.FeatureExtractor(model, timesteps=[10], blocks=[3], pool="gap", batch_size=8, threads=2)
    out = tmp_path / "f.safetensors"
    with pytest.raises(dp.CancelledError):
        dp.run_extraction(fx, fmnist["images"][:64], out, chunk_size=8, progress=lambda p: p.rows_done < 16)
    assert not out.exists()
    r = dp.run_extraction(fx, fmnist["images"][:64], out, chunk_size=8)
    assert r.complete and r.rows_resumed >= 16
    whole = fx.extract(fmnist["images"][:64])[10, 3]
    assert np.array_equal(dp.FeatureFile.open(out)[10, 3], whole)


def test_callback_exception_propagates(model, fmnist):
    fx = dp.FeatureExtractor(model, timesteps=[10], blocks=[1], batch_size=4)

    def boom(done, total):
        raise RuntimeError("stop here")

    with pytest.raises(RuntimeError, match="stop here"):
        fx.extract(fmnist["images"][:16], progress=boom)


def test_unpooled_features_and_forward(model, fmnist):
    x = dp.preprocess(fmnist["images"][:4], 1, 32)
    fx = dp.FeatureExtractor(model, timesteps=[0], blocks=[2, 9], noise="none", threads=1)
    f = fx.extract(x)
    out = model.forward(x, np.zeros(4, np.float32), blocks=[2, 9], threads=1)
    for b in (2, 9):
        assert f[0, b].shape == model.block_output_shape(b, 4)
        assert np.array_equal(f[0, b], out[b])  # forward's NHWC view equals the extractor's NCHW copy
    pooled = dp.Pooler("avg:2")(f[0, 9])
    fxp = dp.FeatureExtractor(model, timesteps=[0], blocks=[9], noise="none", pool="avg:2", threads=1)
    assert np.array_equal(pooled, fxp.extract(x)[0, 9].reshape(4, -1))


def test_save_and_read_feature_files(model, fmnist, tmp_path):
    fx = dp.FeatureExtractor(model, timesteps=[10], blocks=[9], pool="avg:2")
    f = fx.extract(fmnist["images"][:8])
    md = dp.FeatureMetadata.describe(fx)
    for store in ("f32", "f16", "bf16"):
        p = tmp_path / f"{store}.safetensors"
        dp.save_features(p, f, labels=fmnist["labels"][:8], metadata=md, store=store)
        ff = dp.FeatureFile.open(p)
        got = ff["t10.b9"]
        assert got.dtype == (np.float16 if store == "f16" else np.float32)
        np.testing.assert_allclose(got, f[10, 9], rtol=1e-2, atol=1e-2)
        rows = dp.FeatureRows.open(p, "t10.b9")
        assert rows.rows == 8 and rows.sample_shape == f[10, 9].shape[1:]
        np.testing.assert_array_equal(rows.read_range(0, 8), got.astype(np.float32))
    ff = dp.FeatureFile.open(tmp_path / "f32.safetensors")
    assert ff.metadata.timesteps == [10] and ff.metadata.pooling == "avg:2"
    assert np.array_equal(ff[10, 9], f[10, 9])


def test_run_extraction_skips_unreadable_images(model, tmp_path):
    for cls in ("a", "b"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, size=(8, 8), dtype=np.uint8)
    import zlib, struct

    def png(a):  # a minimal grey PNG, no PIL needed
        raw = b"".join(b"\x00" + bytes(row) for row in a)
        def chunk(t, d):
            return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)
        ihdr = struct.pack(">IIBBBBB", a.shape[1], a.shape[0], 8, 0, 0, 0, 0)
        return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    (tmp_path / "imgs" / "a" / "0.png").write_bytes(png(arr))
    (tmp_path / "imgs" / "a" / "1.png").write_bytes(b"")
    (tmp_path / "imgs" / "b" / "2.png").write_bytes(png(arr.T))
    fx = dp.FeatureExtractor(model, timesteps=[10], blocks=[3], pool="gap")
    with pytest.raises(dp.FormatError, match="1.png"):
        dp.run_extraction(fx, tmp_path / "imgs", tmp_path / "stop.safetensors")
    r = dp.run_extraction(fx, tmp_path / "imgs", tmp_path / "skip.safetensors", skip_bad_images=True)
    assert [row for row, _ in r.skipped] == [1] and "1.png" in r.skipped[0][1]
    f = dp.FeatureFile.open(tmp_path / "skip.safetensors")
    x = f.feature("t10.b3")
    assert np.isnan(x[1]).all() and np.isfinite(x[0]).all() and np.isfinite(x[2]).all()
