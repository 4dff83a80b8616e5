"""Property tests (hypothesis) over config fields and every reader: "a clean error or a valid
result, never a traceback, never an unbounded allocation".

A clean error is the reader's named error type (ConfigError, DataError, CheckpointError,
InputTooLarge: ValueErrors) whose one message names the field or the file. Every test runs under
a memory budget of ``SIMCLR_XB_MAX_BYTES`` = 64 MB (simclr_xb.inputs), so a declared size above
it must be refused before it is allocated. The budget is bounded: max_examples per test is
small and the whole file runs in well under a minute on 2 shared cores (no timing asserted).
"""
from __future__ import annotations

import gzip
import math
import pickle
from dataclasses import fields
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from simclr_xb.checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
from simclr_xb.config import Config, ConfigError, load_config_file, preset
from simclr_xb.data import DataError, load_dataset
from simclr_xb.data.idx import IMAGES_MAGIC, LABELS_MAGIC, read_idx
from simclr_xb.data.pixels import to_rgb_uint8
from simclr_xb.inputs import InputTooLarge

BUDGET = 64 << 20
FAST = settings(max_examples=40, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
SLOW = settings(FAST, max_examples=15)


@pytest.fixture(autouse=True)
def _memory_budget(monkeypatch):
    monkeypatch.setenv("SIMCLR_XB_MAX_BYTES", str(BUDGET))


def clean(e: BaseException, *names: str) -> None:
    """A named, one-line error of the project's own kinds."""
    assert isinstance(e, (ConfigError, DataError, CheckpointError, InputTooLarge)), repr(e)
    msg = str(e)
    assert msg and any(n in msg for n in names), (names, msg)


# --------------------------------------------------------------------------- config fields
def all_fields() -> list[str]:
    return [f"{s.name}.{f.name}" for s in fields(Config) for f in fields(getattr(Config(), s.name))]


VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-2 ** 70, max_value=2 ** 70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20),
    st.sampled_from([1e30, -1e30, 2 ** 63, 2 ** 63 - 1, 2 ** 64, 1e-300, 0, -1, 5e-324, "inf", "nan",
                     "1e30", "-0", [0.1, "nan"], [1, 2, 3], {"a": 1}, "\x00", "a\nb"]),
    st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=3))


def _finite_tree(cfg: Config) -> bool:
    for s in fields(cfg):
        for f in fields(getattr(cfg, s.name)):
            v = getattr(getattr(cfg, s.name), f.name)
            for x in (v if isinstance(v, tuple) else (v,)):
                if isinstance(x, float) and not math.isfinite(x):
                    return False
                if isinstance(x, int) and not isinstance(x, bool) and abs(x) >= 2 ** 63:
                    return False
    return True


@FAST
@given(field=st.sampled_from(all_fields()), value=VALUES)
def test_any_value_of_any_config_field_is_valid_or_named(field, value):
    """Introspected fields: a field another engineer adds is fuzzed too."""
    try:
        cfg = preset("tiny").with_value(field, value).validate()
    except ConfigError as e:
        clean(e, field)
        assert "\n" not in str(e)
        return
    assert _finite_tree(cfg)
    assert Config.from_json(cfg.to_json()) == cfg  # what is accepted round-trips (checkpoints)


@FAST
@given(field=st.sampled_from(all_fields()), text=st.one_of(
    st.text(max_size=30), st.sampled_from(["inf", "-inf", "nan", "NaN", "Infinity", "1e30", "1e400",
                                           "9" * 5000, "[[[[1]]]]", "{}", "none", "true", "0x10"])))
def test_any_cli_override_is_valid_or_named(field, text):
    try:
        cfg = preset("tiny").with_overrides([f"{field}={text}"])
    except ConfigError as e:
        clean(e, field)
        return
    assert _finite_tree(cfg)


@FAST
@given(raw=st.one_of(st.binary(max_size=200), st.text(max_size=200).map(str.encode),
                     st.sampled_from([b"[]", b"3", b'"x"', b"null", b"[" * 100000, b'{"train": 5}',
                                      b'{"train": {"epochs": {"a": 1}}}', b'{"preset": ["x"]}',
                                      b'{"train": {"seed": 1e30}}', b'{"optim": {"warmup_epochs": 1e999}}',
                                      b"\xff\xfe", b'{"model": {"bn_eps": Infinity}}'])),
       suffix=st.sampled_from([".json", ".toml"]))
def test_any_config_file_is_valid_or_names_the_file(tmp_path, raw, suffix):
    path = tmp_path / f"c{suffix}"
    path.write_bytes(raw)
    try:
        cfg = load_config_file(path, base=preset("tiny"))
    except ConfigError as e:
        clean(e, str(path))
        return
    assert _finite_tree(cfg)


# --------------------------------------------------------------------------- IDX
def _idx(magic: int, dims: tuple[int, ...], body: bytes) -> bytes:
    return magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims) + body


@FAST
@given(dims=st.tuples(*[st.integers(0, 2 ** 32 - 1)] * 3), body=st.binary(max_size=300),
       gz=st.booleans(), cut=st.integers(0, 400))
def test_idx_declared_sizes_and_truncations(tmp_path, dims, body, gz, cut):
    data = _idx(IMAGES_MAGIC, dims, body)[:cut]
    path = tmp_path / ("x.gz" if gz else "x")
    path.write_bytes(gzip.compress(data) if gz else data)
    try:
        a = read_idx(path, IMAGES_MAGIC)
    except (DataError, InputTooLarge) as e:
        clean(e, str(path))
        return
    assert a.shape == dims and a.nbytes <= BUDGET


@SLOW
@given(junk=st.binary(min_size=0, max_size=64), declared=st.integers(1, 200))
def test_gzip_bomb_is_cut_at_the_declared_size(tmp_path, junk, declared):
    """A small .gz inflating to 200 MB (above the budget) behind a header that declares a small
    label file: read stops at the declared size + 1 byte."""
    path = tmp_path / "l.gz"
    with gzip.open(path, "wb", compresslevel=1) as g:
        g.write(_idx(LABELS_MAGIC, (declared,), junk))
        block = bytes(1 << 20)
        for _ in range(200 if declared == 1 else 2):
            g.write(block)
    assert path.stat().st_size < 1 << 20
    with pytest.raises(DataError, match="longer than its header says"):
        read_idx(path, LABELS_MAGIC)


def test_gzip_bomb_declared_in_the_header_is_refused_before_reading(tmp_path):
    path = tmp_path / "i.gz"
    path.write_bytes(gzip.compress(_idx(IMAGES_MAGIC, (60000 * 1000, 28, 28), b"")))
    with pytest.raises(InputTooLarge, match=r"IDX file .*i\.gz \(dims \(60000000, 28, 28\)\) would need"):
        read_idx(path, IMAGES_MAGIC)


# --------------------------------------------------------------------------- HDF5
DTYPES = st.sampled_from(["u1", "i1", "u2", "i4", "i8", "f4", "f8", "?", "S3"])
SHAPES = st.lists(st.integers(0, 2 ** 40), min_size=0, max_size=5).map(tuple)


@SLOW
@given(ishape=SHAPES, idtype=DTYPES, lshape=SHAPES, ldtype=DTYPES, classes=st.one_of(
    st.none(), st.just("[]"), st.just('["a", "b"]'), st.just("not json"), st.integers(0, 5)),
       top=st.booleans())
def test_hdf5_random_shapes_and_dtypes(tmp_path, ishape, idtype, lshape, ldtype, classes, top):
    path = tmp_path / "d.h5"
    with h5py.File(path, "w") as f:
        g = f if top else f.create_group("train")
        for name, shape, dt in (("images", ishape, idtype), ("labels", lshape, ldtype)):
            maxshape = tuple(None for _ in shape)
            small = int(np.prod(shape, dtype=object)) <= 4096 and all(d < 4096 for d in shape)
            try:
                if small:
                    g.create_dataset(name, data=np.zeros(shape, dt) + (1 if dt != "S3" else b"a"))
                else:  # declared only: chunked storage is allocated lazily
                    chunks = tuple(max(1, min(d, 4)) for d in shape) if shape else None
                    g.create_dataset(name, shape=shape, dtype=dt, chunks=chunks, maxshape=maxshape)
            except (ValueError, OSError, TypeError):
                return  # h5py cannot even declare it: nothing to read
        if classes is not None:
            g.attrs["classes"] = classes
    try:
        ds = load_dataset(f"hdf5:{path}")
    except (DataError, InputTooLarge) as e:
        clean(e, str(path))
        return
    assert ds.images.nbytes <= BUDGET and len(ds.classes) <= 100_000


@FAST
@given(cut=st.floats(0, 1), flip=st.integers(0, 10 ** 6))
def test_hdf5_truncated_or_flipped(tmp_path, small_h5, cut, flip):
    raw = bytearray(small_h5.read_bytes())
    raw[flip % len(raw)] ^= 0xFF
    path = tmp_path / "t.h5"
    path.write_bytes(bytes(raw[:max(0, int(len(raw) * cut))]) if cut < 1 else bytes(raw))
    try:
        ds = load_dataset(f"hdf5:{path}")
    except (DataError, InputTooLarge) as e:
        clean(e, str(path))
        return
    assert ds.images.dtype == np.uint8


@pytest.fixture(scope="module")
def small_h5(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("h5") / "small.h5"
    with h5py.File(path, "w") as f:
        f["images"] = np.random.default_rng(0).integers(0, 256, (8, 8, 8, 3), dtype=np.uint8)
        f["labels"] = np.arange(8) % 3
    return path


# --------------------------------------------------------------------------- images
MODES = st.sampled_from(["1", "L", "P", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "LAB", "HSV", "I",
                         "I;16", "I;16B", "I;16L", "F", "LA", "PA", "La", "RGBa"])


@FAST
@given(mode=MODES, w=st.integers(0, 12), h=st.integers(0, 12), seed=st.integers(0, 2 ** 32 - 1),
       transparency=st.booleans())
def test_any_image_mode_and_size(mode, w, h, seed, transparency):
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, w * h * 8, dtype=np.uint8).tobytes()
    try:
        img = Image.frombytes(mode, (w, h), raw[:len(Image.new(mode, (w, h)).tobytes())])
    except ValueError:  # Pillow cannot build this mode/size at all: nothing to convert
        return
    if mode == "P" and transparency:
        img.info["transparency"] = 0
    try:
        out = to_rgb_uint8(img, "T/img.png")
    except DataError as e:
        clean(e, "T/img.png")
        assert "\n" not in str(e)
        return
    assert out.shape == (h, w, 3) and out.dtype == np.uint8


@SLOW
@given(raw=st.binary(max_size=300), ext=st.sampled_from([".png", ".jpg", ".gif", ".bmp", ".webp"]),
       prefix=st.sampled_from([b"", b"\x89PNG\r\n\x1a\n", b"GIF89a", b"BM", b"\xff\xd8\xff"]))
def test_folder_reader_on_random_bytes(tmp_path, raw, ext, prefix):
    root = tmp_path / "imgs"
    (root / "a").mkdir(parents=True, exist_ok=True)
    for old in (root / "a").iterdir():
        old.unlink()
    Image.new("RGB", (4, 4), (10, 20, 30)).save(root / "a" / "ok.png")
    bad = root / "a" / f"bad{ext}"
    bad.write_bytes(prefix + raw)
    try:
        ds = load_dataset(f"folder:{root}", image_size=4)
    except DataError as e:
        clean(e, str(bad))
        return
    assert ds.images.shape[1:] == (4, 4, 3)


# --------------------------------------------------------------------------- CIFAR, checkpoints
@SLOW
@given(raw=st.one_of(st.binary(max_size=300), st.sampled_from([
    pickle.dumps({"data": [1, 2], "labels": [0]}), pickle.dumps([1, 2, 3]), pickle.dumps(None),
    pickle.dumps({"data": np.zeros((2, 5), np.uint8), "labels": [0, 1]}),
    pickle.dumps({"data": np.zeros((2, 3072), np.float32), "labels": [0, 1]}),
    pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "labels": [0, 10 ** 12]})])))
def test_cifar_random_batches(tmp_path, raw):
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir(exist_ok=True)
    good = pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "labels": [0, 1]})
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (root / name).write_bytes(good)
    (root / "data_batch_3").write_bytes(raw)
    (root / "batches.meta").write_bytes(pickle.dumps({"label_names": [str(i) for i in range(10)]}))
    try:
        ds = load_dataset("cifar10", root=tmp_path)
    except DataError as e:
        clean(e, str(root / "data_batch_3"), "cifar")
        return
    assert ds.images.shape[1:] == (32, 32, 3)


@pytest.fixture(scope="module")
def ckpt_bytes(tmp_path_factory) -> bytes:
    from simclr_xb.resnet_spec import init_weights
    cfg = preset("tiny").with_overrides(["model.width=0.125"])
    path = tmp_path_factory.mktemp("ck") / "c.h5"
    save_checkpoint(path, Checkpoint(config=cfg, weights=init_weights(cfg.model, 0), step=1))
    return path.read_bytes()


@SLOW
@given(cut=st.floats(0, 1), flip=st.integers(0, 10 ** 7), junk=st.binary(max_size=8))
def test_checkpoint_truncated_or_flipped(tmp_path, ckpt_bytes, cut, flip, junk):
    raw = bytearray(ckpt_bytes)
    i = flip % len(raw)
    raw[i:i + len(junk)] = junk
    path = tmp_path / "c.h5"
    path.write_bytes(bytes(raw[:int(len(raw) * cut)]) if cut < 1 else bytes(raw))
    try:
        ck = load_checkpoint(path)
    except CheckpointError as e:
        clean(e, str(path))
        return
    assert all(np.isfinite(v).all() for v in ck.weights.values() if v.dtype.kind == "f")


@SLOW
@given(name=st.sampled_from(["encoder.conv1.weight", "head.0.weight"]),
       bad=st.sampled_from([np.nan, np.inf, -np.inf, "int", "complex"]))
def test_checkpoint_with_nonfinite_or_nonfloat_weights_is_refused(tmp_path, name, bad):
    from simclr_xb.resnet_spec import init_weights
    cfg = preset("tiny").with_overrides(["model.width=0.125"])
    w = init_weights(cfg.model, 0)
    name = next(k for k in w if k.startswith(name.split(".")[0]) and k.endswith("weight"))
    if bad == "int":
        w[name] = w[name].astype(np.int32)
    elif bad == "complex":
        w[name] = w[name].astype(np.complex64)
    else:
        w[name] = w[name].copy()
        w[name].flat[0] = bad
    path = tmp_path / "nan.h5"
    save_checkpoint(path, Checkpoint(config=cfg, weights=w, step=1))
    with pytest.raises(CheckpointError, match=rf"checkpoint {path} tensor weights/{name} "):
        load_checkpoint(path)


def test_a_fuzz_run_really_tests_something():
    """Negative control: the property helper rejects an unnamed or foreign error."""
    with pytest.raises(AssertionError):
        clean(KeyError("x"), "x")
    with pytest.raises(AssertionError):
        clean(DataError("something"), "T/file")


# --------------------------------------------------------------------------- through the CLI boundary
@FAST
@given(field=st.sampled_from(all_fields()), text=st.one_of(
    st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=20),
    st.sampled_from(["inf", "nan", "-1", "0", "1e30", "1e400", "9" * 400, "[1, 2]", "{}", "none", "0.5,nan"])))
def test_cli_set_any_value_gives_a_named_error_never_a_traceback(tmp_path, field, text):
    """`views` builds the config, then refuses the non-PNG --out: a fast probe of the CLI's one
    error boundary on every field (a valid value ends at the --out check, nothing is rendered)."""
    from click.testing import CliRunner

    from simclr_xb.cli import main
    r = CliRunner().invoke(main, ["views", "--set", f"{field}={text}", "--out", str(tmp_path / "x.txt")])
    assert r.exit_code != 0 and "Traceback" not in r.output and "internal error" not in r.output, r.output
    assert field in r.output or "must name a .png" in r.output, r.output
