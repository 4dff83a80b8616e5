"""Data layer: every reader on small files written here (good, truncated, malformed), shapes,
pack round trips, offline download, and the batch loader's order, sharding, resume, threads."""
from __future__ import annotations

import gzip
import json
import os
import pickle
import struct
import threading
import time
import urllib.error
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from simclr_xb.data import DATASETS, BatchLoader, DataError, Dataset, available_splits, load_dataset, make_shapes, pack
from simclr_xb.data import download as dl
from simclr_xb.data import shapes as shapes_mod
from simclr_xb.data.cifar import safe_load
from simclr_xb.data.idx import IMAGES_MAGIC, LABELS_MAGIC, read_idx
from simclr_xb.data.loader import THREAD_PREFIX
from simclr_xb.data.shapes import SHAPE_CLASSES

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(autouse=True)
def _isolated(tmp_path_factory, monkeypatch):
    """No reader may find the user's real cache or $SIMCLR_XB_DATA."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.delenv("SIMCLR_XB_DATA", raising=False)


def check_dataset(ds: Dataset, n: int, hw: tuple[int, int], num_classes: int) -> None:
    assert ds.images.dtype == np.uint8 and ds.images.shape == (n, *hw, 3)
    assert ds.labels.dtype == np.int64 and ds.labels.shape == (n,)
    assert len(ds.classes) == num_classes
    assert ds.labels.min() >= 0 and ds.labels.max() < num_classes


# --- IDX ---------------------------------------------------------------------------------
def idx_bytes(a: np.ndarray, magic: int) -> bytes:
    return struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in a.shape) + a.tobytes()


def write_idx_split(folder: Path, split: str, images: np.ndarray, labels: np.ndarray, gz: bool = True) -> None:
    p = "train" if split == "train" else "t10k"
    folder.mkdir(parents=True, exist_ok=True)
    for name, a, magic in ((f"{p}-images-idx3-ubyte", images, IMAGES_MAGIC),
                           (f"{p}-labels-idx1-ubyte", labels, LABELS_MAGIC)):
        data = idx_bytes(a.astype(np.uint8), magic)
        if gz:
            (folder / (name + ".gz")).write_bytes(gzip.compress(data))
        else:
            (folder / name).write_bytes(data)


def small_grey(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n).astype(np.uint8)


@pytest.mark.parametrize("gz", [True, False])
def test_idx_reads_gz_and_raw_grey_to_rgb(tmp_path, gz):
    imgs, lbls = small_grey(7)
    write_idx_split(tmp_path, "train", imgs, lbls, gz=gz)
    timgs, tlbls = small_grey(3, 1)
    write_idx_split(tmp_path, "test", timgs, tlbls, gz=gz)
    ds = load_dataset("mnist", root=tmp_path)
    check_dataset(ds, 7, (28, 28), 10)
    for c in range(3):  # grey expanded to 3 equal channels
        np.testing.assert_array_equal(ds.images[..., c], imgs)
    np.testing.assert_array_equal(ds.labels, lbls)
    te = load_dataset("mnist", "test", root=tmp_path)
    np.testing.assert_array_equal(te.images[..., 0], timgs)
    assert load_dataset("fashion-mnist", root=tmp_path).classes[0] == "T-shirt/top"


def test_idx_env_var_subfolder(tmp_path, monkeypatch):
    write_idx_split(tmp_path / "fashion-mnist", "train", *small_grey(4))
    monkeypatch.setenv("SIMCLR_XB_DATA", str(tmp_path))
    ds = load_dataset("fashion-mnist")
    assert len(ds) == 4 and ds.source == str(tmp_path / "fashion-mnist")


def test_idx_truncated(tmp_path):
    imgs, lbls = small_grey(5)
    write_idx_split(tmp_path, "train", imgs, lbls, gz=False)
    f = tmp_path / "train-images-idx3-ubyte"
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.*truncated"):
        load_dataset("mnist", root=tmp_path)
    f.write_bytes(b"\x00\x00\x08")
    with pytest.raises(DataError, match="truncated"):
        read_idx(f, IMAGES_MAGIC)


def test_idx_truncated_gzip(tmp_path):
    write_idx_split(tmp_path, "train", *small_grey(5))
    f = tmp_path / "train-images-idx3-ubyte.gz"
    f.write_bytes(f.read_bytes()[:200])
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\.gz.*(truncated|corrupt)"):
        load_dataset("mnist", root=tmp_path)


def test_idx_wrong_magic(tmp_path):
    imgs, lbls = small_grey(5)
    write_idx_split(tmp_path, "train", imgs, lbls, gz=False)
    # labels file written with the images magic
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx_bytes(lbls[:, None, None], IMAGES_MAGIC))
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte has magic number 0x00000803, expected 0x00000801"):
        load_dataset("mnist", root=tmp_path)


def test_idx_count_mismatch(tmp_path):
    imgs, lbls = small_grey(5)
    write_idx_split(tmp_path, "train", imgs, lbls[:4])
    with pytest.raises(DataError, match=r"5 images .* 4 labels"):
        load_dataset("mnist", root=tmp_path)


def test_idx_missing_explains_where_and_download(tmp_path):
    with pytest.raises(DataError) as e:
        load_dataset("mnist", root=tmp_path)
    msg = str(e.value)
    assert "train-images-idx3-ubyte.gz" in msg and str(tmp_path) in msg and "SIMCLR_XB_DATA" in msg
    assert "download=True" in msg


@pytest.mark.skipif(not (FASHION_DIR / "t10k-labels-idx1-ubyte.gz").exists(),
                    reason="Debian package dataset-fashion-mnist not installed")
def test_real_fashion_mnist_package():
    tr = load_dataset("fashion-mnist", "train")
    te = load_dataset("fashion-mnist", "test")
    check_dataset(tr, 60000, (28, 28), 10)
    check_dataset(te, 10000, (28, 28), 10)
    assert tr.source == str(FASHION_DIR)
    assert np.bincount(tr.labels).tolist() == [6000] * 10
    assert np.bincount(te.labels).tolist() == [1000] * 10


# --- CIFAR -------------------------------------------------------------------------------
def cifar_arrays(n: int, classes: int, seed: int = 0) -> tuple[np.ndarray, list[int]]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 3072), dtype=np.uint8), rng.integers(0, classes, n).tolist()


def write_cifar10(root: Path, n_per_batch: int = 4, protocol: int = 2) -> Path:
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        data, labels = cifar_arrays(n_per_batch, 10, i)
        with open(d / name, "wb") as f:
            pickle.dump({b"batch_label": name.encode(), b"labels": labels, b"data": data,
                         b"filenames": [b"x.png"] * n_per_batch}, f, protocol=protocol)
    with open(d / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [c.encode() for c in ("airplane", "automobile", "bird", "cat", "deer",
                                                            "dog", "frog", "horse", "ship", "truck")],
                     b"num_vis": 3072}, f, protocol=protocol)
    return d


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar10_reads_and_converts_chw_to_hwc(tmp_path, protocol):
    d = write_cifar10(tmp_path, protocol=protocol)
    tr = load_dataset("cifar10", root=tmp_path)
    check_dataset(tr, 20, (32, 32), 10)
    data, labels = cifar_arrays(4, 10, 0)
    # pixel (row 2, col 5) of image 0: R, G, B planes of 1024 bytes each
    np.testing.assert_array_equal(tr.images[0, 2, 5], data[0, [2 * 32 + 5, 1024 + 2 * 32 + 5, 2048 + 2 * 32 + 5]])
    np.testing.assert_array_equal(tr.labels[:4], labels)
    assert tr.classes[0] == "airplane" and tr.source == str(d)
    check_dataset(load_dataset("cifar10", "test", root=tmp_path), 4, (32, 32), 10)


def test_cifar100(tmp_path):
    d = tmp_path / "cifar-100-python"
    d.mkdir()
    for name, n in (("train", 6), ("test", 2)):
        data, labels = cifar_arrays(n, 100)
        with open(d / name, "wb") as f:
            pickle.dump({b"data": data, b"fine_labels": labels, b"coarse_labels": [0] * n}, f)
    with open(d / "meta", "wb") as f:
        pickle.dump({b"fine_label_names": [f"c{i}".encode() for i in range(100)]}, f)
    ds = load_dataset("cifar100", root=tmp_path)
    check_dataset(ds, 6, (32, 32), 100)


def test_cifar_truncated_pickle(tmp_path):
    d = write_cifar10(tmp_path)
    f = d / "data_batch_3"
    f.write_bytes(f.read_bytes()[:500])
    with pytest.raises(DataError, match=r"data_batch_3.*(truncated|corrupt)"):
        load_dataset("cifar10", root=tmp_path)


def test_cifar_wrong_sizes(tmp_path):
    d = write_cifar10(tmp_path)
    with open(d / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((4, 3000), np.uint8), b"labels": [0] * 4}, f)
    with pytest.raises(DataError, match=r"test_batch.*uint8 \(N, 3072\)"):
        load_dataset("cifar10", "test", root=tmp_path)
    with open(d / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((4, 3072), np.uint8), b"labels": [0] * 3}, f)
    with pytest.raises(DataError, match=r"test_batch.*'labels' must be 4 integers"):
        load_dataset("cifar10", "test", root=tmp_path)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_cifar_refuses_code_in_pickle(tmp_path, monkeypatch):
    d = write_cifar10(tmp_path)
    with open(d / "data_batch_1", "wb") as f:
        pickle.dump({b"data": _Evil(), b"labels": []}, f)
    called = []
    monkeypatch.setattr(os, "system", lambda *a: called.append(a))
    with pytest.raises(DataError, match=r"refusing to load .*data_batch_1.*(posix|os)\.system"):
        load_dataset("cifar10", root=tmp_path)
    assert not called
    assert safe_load(d / "batches.meta")["label_names"][0] == b"airplane"


def test_cifar_missing_mentions_download(tmp_path):
    with pytest.raises(DataError, match=r"(?s)cifar-10-batches-py/data_batch_1.*download=True"):
        load_dataset("cifar10", root=tmp_path)


# --- folder ------------------------------------------------------------------------------
def write_png(path: Path, size=(20, 12), mode="RGB", value=128) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value if mode != "RGB" else (value, 255 - value, 7)).save(path)


def test_folder_classes_sorted_resized_grey(tmp_path):
    write_png(tmp_path / "zebra" / "a.png")
    write_png(tmp_path / "zebra" / "b.JPG", size=(40, 40))
    write_png(tmp_path / "apple" / "c.png", mode="L", value=90)  # grey
    write_png(tmp_path / "apple" / "d.gif", mode="P", value=3)
    (tmp_path / "apple" / "notes.txt").write_text("not an image")
    ds = load_dataset(f"folder:{tmp_path}", image_size=16)
    check_dataset(ds, 4, (16, 16), 2)
    assert ds.classes == ["apple", "zebra"]
    assert ds.labels.tolist() == [0, 0, 1, 1]
    assert (ds.images[0] == 90).all()  # grey -> 3 equal channels
    assert tuple(ds.images[2, 8, 8]) == (128, 127, 7)
    assert load_dataset(f"folder:{tmp_path}").images.shape[1:] == (32, 32, 3)  # default size
    with pytest.raises(DataError, match=r"no train/ and test/ subfolders.*single split"):
        load_dataset(f"folder:{tmp_path}", "test")
    assert available_splits(f"folder:{tmp_path}") == ("train",)


def test_folder_train_test_subfolders(tmp_path):
    write_png(tmp_path / "train" / "cat" / "1.png")
    write_png(tmp_path / "train" / "dog" / "1.png")
    write_png(tmp_path / "test" / "dog" / "2.png")
    te = load_dataset(f"folder:{tmp_path}", "test")
    assert te.classes == ["cat", "dog"] and te.labels.tolist() == [1]  # labels agree with train
    assert available_splits(f"folder:{tmp_path}") == ("train", "test")


def test_folder_missing_and_empty(tmp_path):
    with pytest.raises(DataError, match=f"{tmp_path / 'nope'} does not exist"):
        load_dataset(f"folder:{tmp_path / 'nope'}")
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(DataError, match=rf"{tmp_path / 'empty'} holds no images"):
        load_dataset(f"folder:{tmp_path / 'empty'}")


def test_folder_bad_image_error_and_skip(tmp_path):
    write_png(tmp_path / "a" / "good.png")
    (tmp_path / "a" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not a png")
    with pytest.raises(DataError, match=r"cannot decode image .*bad\.png.*skip_bad_images"):
        load_dataset(f"folder:{tmp_path}")
    with pytest.warns(UserWarning, match=r"skipped 1 undecodable image.*bad\.png"):
        ds = load_dataset(f"folder:{tmp_path}", skip_bad_images=True)
    assert len(ds) == 1 and ds.skipped == 1


# --- HDF5 --------------------------------------------------------------------------------
def test_hdf5_groups_toplevel_and_grey(tmp_path):
    rng = np.random.default_rng(0)
    p = tmp_path / "a.h5"
    with h5py.File(p, "w") as f:
        f.attrs["classes"] = json.dumps(["x", "y", "z"])
        for s, n in (("train", 5), ("test", 2)):
            f[f"{s}/images"] = rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
            f[f"{s}/labels"] = rng.integers(0, 3, n)
    check_dataset(load_dataset(f"hdf5:{p}", "test"), 2, (8, 8), 3)
    q = tmp_path / "b.h5"
    with h5py.File(q, "w") as f:
        f["images"] = rng.integers(0, 256, (4, 6, 6), dtype=np.uint8)  # grey, no classes attribute
        f["labels"] = np.array([0, 1, 1, 0], np.uint8)
    ds = load_dataset(f"hdf5:{q}")
    check_dataset(ds, 4, (6, 6), 2)
    assert ds.classes == ["0", "1"] and (ds.images[..., 0] == ds.images[..., 2]).all()
    with pytest.raises(DataError, match=r"no split 'test'.*top-level"):
        load_dataset(f"hdf5:{q}", "test")


@pytest.mark.parametrize("images,labels,match", [
    (np.zeros((4, 8, 8, 4), np.uint8), np.zeros(4, np.int64), r"dataset /train/images is uint8 \(4, 8, 8, 4\)"),
    (np.zeros((4, 8, 8, 3), np.float32), np.zeros(4, np.int64), r"dataset /train/images is float32"),
    (np.zeros((4, 8, 8, 3), np.uint8), np.zeros((4, 2), np.int64), r"dataset /train/labels is int64 \(4, 2\)"),
    (np.zeros((4, 8, 8, 3), np.uint8), np.zeros(3, np.int64),
     r"/train/images holds 4 images but /train/labels holds 3"),
])
def test_hdf5_wrong_shapes(tmp_path, images, labels, match):
    p = tmp_path / "bad.h5"
    with h5py.File(p, "w") as f:
        f["train/images"] = images
        f["train/labels"] = labels
    with pytest.raises(DataError, match=rf"{p}.*{match}"):
        load_dataset(f"hdf5:{p}")


def test_hdf5_not_hdf5_and_missing(tmp_path):
    p = tmp_path / "junk.h5"
    p.write_bytes(b"not hdf5 at all")
    with pytest.raises(DataError, match=str(p)):
        load_dataset(f"hdf5:{p}")
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(f"hdf5:{tmp_path / 'nope.h5'}")


# --- pack round trips --------------------------------------------------------------------
def _roundtrip(spec: str, out: Path, root=None, splits=("train", "test")) -> None:
    res = pack(spec, out, root=root)
    assert res.path == out and tuple(res.counts) == splits
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp file left
    for s in splits:
        a, b = load_dataset(spec, s, root=root), load_dataset(f"hdf5:{out}", s)
        np.testing.assert_array_equal(a.images, b.images)
        np.testing.assert_array_equal(a.labels, b.labels)
        assert a.classes == b.classes and res.counts[s] == len(a)


def test_pack_roundtrip_every_source(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    _roundtrip("shapes:train=30,test=20,seed=4", out / "shapes.h5")
    idx_root = tmp_path / "idx"
    write_idx_split(idx_root, "train", *small_grey(6))
    write_idx_split(idx_root, "test", *small_grey(3, 1))
    _roundtrip("mnist", out / "mnist.h5", root=idx_root)
    write_cifar10(tmp_path / "c10")
    _roundtrip("cifar10", out / "c10.h5", root=tmp_path / "c10")
    write_png(tmp_path / "imgs" / "train" / "a" / "1.png")
    write_png(tmp_path / "imgs" / "train" / "b" / "1.png", value=3)
    write_png(tmp_path / "imgs" / "test" / "b" / "2.png", value=9)
    _roundtrip(f"folder:{tmp_path / 'imgs'}", out / "imgs.h5")
    write_png(tmp_path / "flat" / "a" / "1.png")
    _roundtrip(f"folder:{tmp_path / 'flat'}", out / "flat.h5", splits=("train",))
    _roundtrip(f"hdf5:{out / 'mnist.h5'}", out / "again.h5")
    with pytest.raises(DataError, match="already exists.*overwrite"):
        pack("shapes:train=10,test=10", out / "shapes.h5")
    assert pack("shapes:train=10,test=10", out / "shapes.h5", overwrite=True).counts == {"train": 10, "test": 10}


# --- shapes ------------------------------------------------------------------------------
def test_shapes_deterministic_prefix_stable_and_seeded():
    a, la = make_shapes(300, "train", seed=0)
    ref = a.copy()
    a[:] = 0  # callers get copies: this must not reach the in-memory cache
    assert make_shapes(300, "train", seed=0)[0].tobytes() == ref.tobytes()
    shapes_mod._cached.cache_clear()  # regenerate: same seed, same bytes
    b, lb = make_shapes(300, "train", seed=0)
    assert b.tobytes() == ref.tobytes() and (la == lb).all()
    a = b
    c, _ = make_shapes(120, "train", seed=0)
    assert c.tobytes() == a[:120].tobytes()  # the first n do not depend on how many are asked for
    d, _ = make_shapes(300, "train", seed=1)
    assert (d != a).mean() > 0.5
    t, _ = make_shapes(300, "test", seed=0)
    assert (t != a).mean() > 0.5  # test is a different stream


def test_shapes_balanced_all_classes():
    imgs, labels = make_shapes(1000, "train", seed=0)
    check_dataset(Dataset(imgs, labels, list(SHAPE_CLASSES), "shapes"), 1000, (32, 32), 10)
    assert np.bincount(labels, minlength=10).tolist() == [100] * 10
    _, tl = make_shapes(150, "test", seed=2)
    assert set(tl.tolist()) == set(range(10))
    assert len(SHAPE_CLASSES) == 10
    # images are not trivial: every image uses a good part of the value range
    spread = imgs.reshape(len(imgs), -1).max(1).astype(int) - imgs.reshape(len(imgs), -1).min(1)
    assert np.median(spread) > 100


def test_shapes_spec_and_defaults():
    ds = load_dataset("shapes:train=40,test=10,seed=5", "test")
    assert len(ds) == 10 and ds.classes == list(SHAPE_CLASSES)
    with pytest.raises(ValueError, match="shapes:train=N"):
        load_dataset("shapes:bogus=1")
    small = load_dataset("shapes:train=40,test=10,seed=5", "test", image_size=16)  # resized on load
    assert small.images.shape == (10, 16, 16, 3) and (small.labels == ds.labels).all()


# --- specs -------------------------------------------------------------------------------
def test_unknown_spec_lists_valid_ones():
    with pytest.raises(ValueError) as e:
        load_dataset("imagenet")
    for spec in DATASETS:
        assert spec in str(e.value)
    with pytest.raises(ValueError, match="split"):
        load_dataset("shapes", "val")


# --- download ----------------------------------------------------------------------------
def test_download_fails_fast_offline(tmp_path, monkeypatch):
    def offline(url, timeout=None):
        assert timeout is not None and timeout <= 10
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")
    monkeypatch.setattr(dl.urllib.request, "urlopen", offline)
    t0 = time.monotonic()
    with pytest.raises(DataError) as e:
        load_dataset("cifar10", root=tmp_path, download=True)
    assert time.monotonic() - t0 < 5  # generous: the refusal is immediate
    msg = str(e.value)
    assert "cifar-10-python.tar.gz" in msg and "6d958be0" in msg and "name resolution" in msg
    assert str(Path(os.environ["XDG_CACHE_HOME"]) / "simclr_xb" / "cifar10") in msg
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\.gz \(md5 8d4fb7e6"):
        load_dataset("fashion-mnist", root=tmp_path, download=True) if not FASHION_DIR.exists() \
            else dl.download("fashion-mnist")


class _Resp:
    def __init__(self, data: bytes):
        self.data = data

    def read(self, n=-1):
        out, self.data = self.data[:n], self.data[n:]
        return out

    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def test_download_checks_hash_and_unpacks(tmp_path, monkeypatch):
    import io
    import tarfile
    src = tmp_path / "src"
    write_cifar10(src)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(src / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    blob = buf.getvalue()
    monkeypatch.setattr(dl.urllib.request, "urlopen", lambda url, timeout=None: _Resp(blob))
    with pytest.raises(DataError, match=r"sha256 [0-9a-f]{64} != expected 6d958be0"):
        dl.download("cifar10")
    dest = Path(os.environ["XDG_CACHE_HOME"]) / "simclr_xb" / "cifar10"
    assert not list(dest.iterdir())  # nothing half-written left behind
    import hashlib
    good = dl.Remote("cifar-10-python.tar.gz", ("https://example.invalid/c.tgz",), "sha256",
                     hashlib.sha256(blob).hexdigest(), True)
    monkeypatch.setitem(dl.REMOTES, "cifar10", (good,))
    ds = load_dataset("cifar10", download=True)
    check_dataset(ds, 20, (32, 32), 10)


# --- loader ------------------------------------------------------------------------------
def loader_data(n: int = 37):
    images = np.arange(n, dtype=np.uint8)[:, None, None, None] * np.ones((1, 2, 2, 3), np.uint8)
    return images, np.arange(n) % 5


def no_loader_threads() -> bool:
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        if not [t for t in threading.enumerate() if t.name.startswith(THREAD_PREFIX)]:
            return True
        time.sleep(0.01)
    return False


@pytest.mark.parametrize("workers", [0, 1, 3])
def test_loader_order_seeded_and_per_epoch(workers):
    images, labels = loader_data()
    a = BatchLoader(images, labels, batch_size=4, seed=7, num_workers=workers)
    b = BatchLoader(images, labels, batch_size=4, seed=7, num_workers=workers)
    ea = [x.indices.tolist() for x in a.epoch(0)]
    assert ea == [x.indices.tolist() for x in b.epoch(0)]
    assert ea != [x.indices.tolist() for x in a.epoch(1)]
    assert ea != [x.indices.tolist() for x in BatchLoader(images, labels, 4, seed=8).epoch(0)]
    assert len(ea) == a.steps_per_epoch == 37 // 4
    for batch in a.epoch(3):  # images and labels follow the indices
        assert (batch.images[:, 0, 0, 0] == batch.indices).all() and (batch.labels == batch.indices % 5).all()
        assert batch.labels.dtype == np.int64
    assert no_loader_threads()


def test_loader_every_index_once_without_drop_last():
    images, labels = loader_data()
    ld = BatchLoader(images, labels, batch_size=5, seed=1, drop_last=False)
    got = np.concatenate([b.indices for b in ld.epoch(2)])
    assert sorted(got.tolist()) == list(range(37)) and ld.steps_per_epoch == 8
    ordered = BatchLoader(images, labels, batch_size=5, shuffle=False, drop_last=False)
    assert np.concatenate([b.indices for b in ordered.epoch(0)]).tolist() == list(range(37))


@pytest.mark.parametrize("world,drop_last", [(2, True), (3, True), (3, False), (4, False)])
def test_loader_shards_disjoint_union_is_single_rank_batch(world, drop_last):
    images, labels = loader_data(50)
    single = BatchLoader(images, labels, batch_size=4 * world, seed=3, drop_last=drop_last)
    ranks = [BatchLoader(images, labels, batch_size=4, seed=3, rank=r, world=world, drop_last=drop_last)
             for r in range(world)]
    assert {r.steps_per_epoch for r in ranks} == {single.steps_per_epoch}
    for epoch in (0, 5):
        per_rank = [[b.indices for b in r.epoch(epoch)] for r in ranks]
        for step, whole in enumerate(single.epoch(epoch)):
            parts = [per_rank[r][step] for r in range(world)]
            np.testing.assert_array_equal(np.concatenate(parts), whole.indices)
            flat = np.concatenate(parts)
            assert len(set(flat.tolist())) == len(flat)
    assert no_loader_threads()


def test_loader_resume_from_step():
    images, labels = loader_data(64)
    ld = BatchLoader(images, labels, batch_size=4, seed=11, num_workers=2)
    full = [b.indices.tolist() for b in ld.epoch(4)]
    assert [b.indices.tolist() for b in ld.epoch(4, start_step=9)] == full[9:]
    assert ld.indices(4, 9).tolist() == full[9]
    assert list(ld.epoch(4, start_step=ld.steps_per_epoch)) == []


def test_loader_no_threads_after_break_close_or_error():
    images, labels = loader_data(400)
    ld = BatchLoader(images, labels, batch_size=2, seed=0, prefetch=2, num_workers=2)
    for _ in ld.epoch(0):  # break early: the iterator is dropped and joins its workers
        break
    assert no_loader_threads()
    it = ld.epoch(1)
    next(it)
    with BatchLoader(images, labels, batch_size=2, seed=0, num_workers=3) as other:
        next(iter(other.epoch(0)))
    ld.close()
    assert no_loader_threads()
    with pytest.raises(RuntimeError, match="boom"):
        with BatchLoader(images, labels, batch_size=2, seed=0) as ld2:
            for _ in ld2.epoch(0):
                raise RuntimeError("boom")
    assert no_loader_threads()
    del it


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_worker_error_reaches_consumer(workers):
    images, labels = loader_data(20)
    ld = BatchLoader(images, labels, batch_size=4, seed=0, num_workers=workers)
    make = ld._make

    def flaky(epoch, step, perm):
        if step == 2:
            raise OSError("disk gone")
        return make(epoch, step, perm)
    ld._make = flaky
    got = []
    with pytest.raises(OSError, match="disk gone"):
        for b in ld.epoch(0):
            got.append(b)
    assert len(got) == 2  # the batches before the failing step arrived, in order
    assert no_loader_threads()


def test_loader_dataset_input_and_errors():
    ds = load_dataset("shapes:train=30,test=10")
    ld = BatchLoader(ds, batch_size=8, seed=0)
    b = next(iter(ld.epoch(0)))
    assert b.images.shape == (8, 32, 32, 3) and b.images.dtype == np.uint8
    ld.close()
    with pytest.raises(ValueError,
                       match=r"batch_size 8 x world 4 = global batch 32 is larger than the dataset \(30 images"):
        BatchLoader(ds, batch_size=8, seed=0, world=4, rank=1)
    with pytest.raises(ValueError, match="rank 2 / world 2"):
        BatchLoader(ds, batch_size=2, seed=0, rank=2, world=2)
    with pytest.raises(ValueError, match="labels"):
        BatchLoader(ds.images, batch_size=2)
    assert len(BatchLoader(ds, batch_size=8, seed=0, world=4, drop_last=False).epoch(0)) == 1
