"""Acceptance (issue 14): the CLI on a corpus of bad inputs that this test writes itself.

For every case: a non-zero exit (or, where marked, a correct result), a message naming the
field, file or option, and no "Traceback". Most run in-process through click's CliRunner (the
same ``main`` the console script runs); a few run as real subprocesses to prove the exit status
and the absence of a traceback on stderr. The data-loss cases at the end fail on the code before
this change (checked by reverting simclr_xb/ and cli.py to main once: see docs/bad-inputs.md).
"""
from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from simclr_xb.checkpoint import Checkpoint, CheckpointError, atomic_write, save_rolling
from simclr_xb.cli import main
from simclr_xb.config import preset
from simclr_xb.resnet_spec import init_weights

pytestmark = pytest.mark.usefixtures("one_torch_thread")
TINY = ["--backend", "torch", "--quiet", "--set", "model.width=0.125", "--set", "augment.image_size=16",
        "--set", "data.num_workers=0", "--batch-size", "8", "--max-steps", "1"]


def png_header(w: int, h: int) -> bytes:
    """A PNG file of a few dozen bytes whose header declares w x h RGB pixels (a decompression
    bomb's shape: the pixel data is a stub, never meant to be decoded)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_clean_failure(r, *names: str) -> str:
    out = r.output
    assert r.exit_code != 0, f"exit 0:\n{out}"
    assert isinstance(r.exception, (SystemExit, type(None))), f"{r.exception!r}\n{out}"
    assert "Traceback" not in out, out
    assert "Error" in out, out
    for n in names:
        assert str(n) in out, f"{n!r} not in:\n{out}"
    error = out[out.index("Error"):].rstrip("\n")
    assert "\n" not in error, f"the error spans several lines:\n{error}"
    return out


# --------------------------------------------------------------------------- the workspace
@pytest.fixture(scope="module")
def W(tmp_path_factory):
    """Files of every kind the corpus needs, written once."""
    t = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(0)
    w = {"T": t}
    data = t / "data.h5"
    with h5py.File(data, "w") as f:
        f["images"] = rng.integers(0, 256, (32, 16, 16, 3), dtype=np.uint8)
        f["labels"] = np.arange(32) % 4
    w["data"] = data
    cfg = preset("tiny").with_overrides(["model.width=0.125", "augment.image_size=16",
                                         "train.batch_size=8", f"data.name=hdf5:{data}",
                                         "data.num_workers=0"])
    w["cfg"] = cfg
    for run, seed in (("a", 0), ("b", 1)):
        save_rolling(t / run, Checkpoint(config=cfg, weights=init_weights(cfg.model, seed), step=2), keep=2)
    for name, change in (("nan", "nan"), ("int", "int")):
        wts = init_weights(cfg.model, 0)
        k = "encoder.conv1.weight"
        wts[k] = wts[k].astype(np.int32) if change == "int" else np.full_like(wts[k], np.nan)
        save_rolling(t / name, Checkpoint(config=cfg, weights=wts, step=2), keep=2)
    other = cfg.with_overrides(["model.arch=resnet34"])
    save_rolling(t / "r34", Checkpoint(config=other, weights=init_weights(other.model, 0), step=2), keep=1)
    os.mkfifo(t / "fifo")
    (t / "regular").write_text("x")
    (t / "junk.h5").write_bytes(rng.integers(0, 256, 500, dtype=np.uint8).tobytes())

    def h5(name, images=None, labels=None, shape=None, dtype=None, classes=None):
        p = t / name
        with h5py.File(p, "w") as f:
            if shape is not None:
                f.create_dataset("images", shape=shape, dtype=dtype or np.uint8, chunks=True)
            else:
                f["images"] = images if images is not None else np.zeros((8, 8, 8, 3), np.uint8)
            f["labels"] = labels if labels is not None else np.zeros(8, np.int64)
            if classes is not None:
                f.attrs["classes"] = classes
        return p
    w["h5_empty_hw"] = h5("hw0.h5", shape=(64, 0, 0, 3))
    w["h5_label_2_40"] = h5("l40.h5", labels=np.array([0] * 7 + [2 ** 40]))
    w["h5_float"] = h5("f.h5", images=np.zeros((8, 8, 8, 3), np.float32))
    w["h5_huge"] = h5("huge.h5", shape=(10 ** 9, 32, 32, 3), labels=np.zeros(4, np.int64))
    w["h5_flabels"] = h5("fl.h5", labels=np.zeros(8, np.float32))
    p = t / "hugelab.h5"
    with h5py.File(p, "w") as f:  # 10^10 images (read lazily) and 10^10 labels (declared, 160 GB)
        f.create_dataset("images", shape=(10 ** 10, 8, 8, 3), dtype=np.uint8, chunks=(1, 8, 8, 3))
        f.create_dataset("labels", shape=(10 ** 10,), dtype=np.int64, chunks=(1024,))
    w["h5_hugelab"] = p
    w["h5_neg"] = h5("neg.h5", labels=-np.ones(8, np.int64))
    w["h5_5d"] = h5("5d.h5", images=np.zeros((2, 2, 2, 2, 3), np.uint8), labels=np.zeros(2, np.int64))
    w["h5_count"] = h5("count.h5", labels=np.zeros(3, np.int64))
    w["h5_classes"] = h5("cls.h5", labels=np.arange(8) % 4, classes='["a"]')
    mn = t / "mnist"
    mn.mkdir()
    import gzip
    hdr = lambda magic, dims: magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims)
    (mn / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(hdr(0x803, (6 * 10 ** 7, 28, 28))))
    (mn / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(hdr(0x801, (6 * 10 ** 7,))))
    w["mnist"] = mn
    mn2 = t / "mnist2"
    mn2.mkdir()
    with gzip.open(mn2 / "train-labels-idx1-ubyte.gz", "wb") as g:
        g.write(hdr(0x801, (4,)) + bytes(4))
        for _ in range(64):
            g.write(bytes(1 << 20))  # 64 MiB behind a 4-label header
    (mn2 / "train-images-idx3-ubyte").write_bytes(hdr(0x803, (4, 2, 2)) + bytes(16))
    w["mnist2"] = mn2
    mn3 = t / "mnist3"
    mn3.mkdir()
    (mn3 / "train-images-idx3-ubyte").write_bytes(hdr(0x803, (4, 2, 2)) + bytes(16))
    (mn3 / "train-labels-idx1-ubyte").write_bytes(hdr(0x801, (4,)) + bytes([0, 1, 2, 200]))
    w["mnist3"] = mn3
    cf = t / "cifar" / "cifar-10-batches-py"
    cf.mkdir(parents=True)
    for n in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (cf / n).write_bytes(pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "labels": [0, 1]}))
    (cf / "batches.meta").write_bytes(pickle.dumps({"label_names": [str(i) for i in range(10)]}))
    (cf / "data_batch_2").write_bytes(pickle.dumps([1, 2, 3]))
    w["cifar"] = t / "cifar"
    imgs = t / "imgs"
    (imgs / "a").mkdir(parents=True)
    (imgs / "b").mkdir()
    ramp = (np.arange(256, dtype=np.uint32).reshape(16, 16) * 257).astype(np.uint16)
    for i in range(4):
        Image.fromarray(ramp).save(imgs / "a" / f"g{i}.png")  # 16-bit grey PNGs
        p = Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).quantize(8)
        p.save(imgs / "b" / f"p{i}.png", transparency=0)  # palette with transparency
    w["imgs"] = imgs
    (t / "imgs-link").symlink_to(imgs, target_is_directory=True)
    fimgs = t / "fimgs"
    (fimgs / "a").mkdir(parents=True)
    for i in range(8):
        Image.fromarray(np.full((8, 8), 7.5, np.float32), "F").save(fimgs / "a" / "f.tiff")
        (fimgs / "a" / "f.tiff").rename(fimgs / "a" / f"f{i}.png")
    w["fimgs"] = fimgs
    # decompression bombs by their headers: 10^8 pixels (Pillow only warns: over 1x, under 2x of
    # Image.MAX_IMAGE_PIXELS) and 9 * 10^8 (Pillow refuses at open: over 2x)
    for name, side in (("bomb1x", 10000), ("bomb2x", 30000)):
        d = t / name
        (d / "a").mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(d / "a" / f"ok{i}.png")
        (d / "a" / "huge.png").write_bytes(png_header(side, side))
        w[name] = d
    import tarfile
    wds = t / "wdsbomb"
    wds.mkdir()
    with tarfile.open(wds / "train-000000.tar", "w") as tf:
        for key, data in (("000000", (d / "a" / "ok0.png").read_bytes()), ("000001", png_header(10000, 10000))):
            for ext, b in (("png", data), ("cls", b"0")):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(b)
                tf.addfile(info, __import__("io").BytesIO(b))
    w["wdsbomb"] = wds
    # config files
    cfgs = t / "cfg"
    cfgs.mkdir()
    files = {"list.json": b"[1, 2]", "number.json": b"3", "string.json": b'"text"',
             "deep.json": b"[" * 100000 + b"]" * 100000, "big.toml": b"# " + b"x" * (2 << 20),
             "latin1.toml": b"[train]\nname = '\xe9'\n", "section.json": b'{"train": 5}',
             "nested.json": b'{"train": {"epochs": {"a": 1}}}', "preset.toml": b"preset = 3\n",
             "inf.toml": b"[optim]\nwarmup_epochs = inf\n", "seed.json": b'{"train": {"seed": 1e30}}',
             "nan.json": b'{"model": {"bn_eps": NaN}}', "unknown.toml": b"[nope]\nx = 1\n",
             "log_every.toml": b"[train]\nlog_every = 10\n"}
    for n, b in files.items():
        (cfgs / n).write_bytes(b)
    w["cfg_dir"] = cfgs
    sub = t / "subsets"
    sub.mkdir()
    (sub / "float.json").write_text(json.dumps({"subset_indices": [0.5, 1.7, 2.2]}))
    (sub / "bool.json").write_text(json.dumps({"subset_indices": [True, False]}))
    (sub / "neg.json").write_text(json.dumps({"subset_indices": [-1, 2]}))
    np.save(sub / "float.npy", np.array([0.5, 1.5]))
    np.save(sub / "2d.npy", np.zeros((2, 2), np.int64))
    w["sub"] = sub
    return w


def _cases():
    """(id, argv builder taking the workspace, names that must appear). A builder returns argv."""
    o = lambda W, n="o": W["T"] / "outs" / n  # noqa: E731 - fresh output folders
    tr = lambda *a: (lambda W: ["train", *TINY, "--data", f"hdf5:{W['data']}", "--out", o(W, a[0]), *a[1:]])  # noqa: E731
    cases = []
    # --- config values (named field) ---------------------------------------------------------
    for i, (field, value) in enumerate([
            ("optim.warmup_epochs", "inf"), ("train.seed", "1e30"), ("model.bn_eps", "inf"),
            ("model.bn_eps", "0.5"), ("loss.temperature", "nan"), ("loss.temperature", "1e-9"),
            ("model.width", "1e308"), ("train.epochs", "1e30"), ("train.batch_size", "99999999999"),
            ("augment.image_size", "100000"), ("augment.crop_scale", "0.1,nan"),
            ("augment.blur_sigma", "-1,2"), ("optim.base_lr", "inf"), ("optim.momentum", "nan"),
            ("train.max_steps", "0"), ("train.keep_last", "-1"), ("data.num_workers", "100000"),
            ("train.epochs", "9" * 5000), ("data.root", "a\nb"), ("loss.chunk", "0"),
            ("model.head_out", "10000000"), ("optim.weight_decay", "5"), ("train.seed", "true"),
            ("train.seed", "9223372036854775808"), ("optim.eta", "-Infinity")]):
        cases.append((f"set-{field}-{i}", tr(f"c{i}", "--set", f"{field}={value}"), [field]))
    cases.append(("set-removed-log_every", tr("le", "--set", "train.log_every=5"),
                  ["train.log_every", "removed", "train.progress_every_s"]))
    cases += [("seed-flag", tr("s1", "--seed", "-1"), ["train.seed"]),
              ("lr-flag", tr("s2", "--lr", "-0.1"), ["optim.base_lr"])]
    # --- config files (named file) -----------------------------------------------------------
    for n in ["list.json", "number.json", "string.json", "deep.json", "big.toml", "latin1.toml",
              "section.json", "nested.json", "preset.toml", "inf.toml", "seed.json", "nan.json",
              "unknown.toml", "absent.toml", "log_every.toml"]:
        cases.append((f"config-{n}", lambda W, n=n: ["train", *TINY, "--out", o(W, "cf"),
                                                     "--config", W["cfg_dir"] / n], [n]))
    # --- counts and devices --------------------------------------------------------------------
    ev = lambda *a: (lambda W: ["eval", "--checkpoint", W["T"] / "a", *a])  # noqa: E731
    cases += [
        ("nproc-0", tr("n0", "--nproc", "0"), ["--nproc"]),
        ("nproc-neg", tr("n1", "--nproc", "-3"), ["--nproc"]),
        ("device-cuda", tr("d0", "--device", "cuda:7"), ["--device"]),
        ("device-bad", tr("d1", "--device", "cuda:x"), ["--device"]),
        ("device-tpu", tr("d2", "--device", "tpu"), ["--device"]),
        ("knn-k-0", ev("--knn-k", "0"), ["--knn-k"]),
        ("eval-batch-0", ev("--batch-size", "0"), ["--batch-size"]),
        ("eval-device", ev("--device", "cuda:3"), ["--device"]),
        ("features-batch-0", lambda W: ["features", "--checkpoint", W["T"] / "a", "--out", o(W, "f.h5"),
                                        "--batch-size", "0"], ["--batch-size"]),
        ("finetune-epochs-0", lambda W: ["finetune", "--checkpoint", W["T"] / "a", "--epochs", "0"],
         ["--epochs"]),
    ]
    for n in ["float.json", "bool.json", "float.npy", "2d.npy"]:
        cases.append((f"subset-{n}", lambda W, n=n: ["finetune", "--checkpoint", W["T"] / "a",
                                                     "--epochs", "1", "--subset", W["sub"] / n], [n]))
    # --- outputs (checked before the work) -----------------------------------------------------
    cases += [
        ("eval-json-missing-dir", ev("--json", "missing/dir/r.json"), ["missing/dir"]),
        ("eval-json-fifo", lambda W: ev("--json", W["T"] / "fifo")(W), ["fifo", "FIFO"]),
        ("eval-json-under-file", lambda W: ev("--json", W["T"] / "regular" / "r.json")(W), ["regular"]),
        ("eval-json-is-checkpoint", lambda W: ev("--json", W["T"] / "a" / "last.h5")(W), ["last.h5", "inputs"]),
        ("export-over-checkpoint", lambda W: ["export", "--checkpoint", W["T"] / "b" / "last.h5", "--format",
                                              "npz", "--out", W["T"] / "b" / "last.h5"], ["inputs"]),
        ("export-over-hard-link", lambda W: ["export", "--checkpoint", W["T"] / "b", "--format", "npz",
                                             "--out", W["T"] / "b" / "ckpt-00000002.h5"], ["inputs"]),
        ("export-fifo", lambda W: ["export", "--checkpoint", W["T"] / "a", "--format", "npz", "--out",
                                   W["T"] / "fifo"], ["FIFO"]),
        ("features-over-data", lambda W: ["features", "--checkpoint", W["T"] / "a", "--data",
                                          f"hdf5:{W['data']}", "--out", W["data"]], ["inputs"]),
        ("features-under-file", lambda W: ["features", "--checkpoint", W["T"] / "a", "--out",
                                           W["T"] / "regular" / "f.h5"], ["regular"]),
        ("train-out-fifo", lambda W: ["train", *TINY, "--out", W["T"] / "fifo"], ["fifo"]),
        ("train-out-existing-run", lambda W: ["train", *TINY, "--out", W["T"] / "a"], ["--resume"]),
        ("train-resume-other-run", lambda W: ["train", *TINY, "--resume", W["T"] / "a", "--out", W["T"] / "b",
                                              "--data", f"hdf5:{W['data']}"], ["another run"]),
        ("init-and-resume", lambda W: ["train", *TINY, "--resume", W["T"] / "a", "--init-from", W["T"] / "a",
                                       "--out", o(W, "ir")], ["--init-from", "--resume"]),
        ("init-from-missing", tr("im", "--init-from", "nowhere/x.h5"), ["nowhere/x.h5"]),
        ("init-from-other-arch", lambda W: tr("ia", "--init-from", W["T"] / "r34")(W), ["--init-from", "resnet34"]),
        ("conformance-json-missing-dir", lambda W: ["conformance", "--json", "no/such/dir/c.json"], ["no/such/dir"]),
        ("bench-out-fifo", lambda W: ["bench", "ntxent", "--size", "tiny", "--out", W["T"] / "fifo"], ["FIFO"]),
        ("bench-plot-under-file", lambda W: ["bench", "quality", "--size", "tiny", "--plot",
                                             W["T"] / "regular" / "q.png", "--out", o(W, "bq")], ["regular"]),
        ("pack-over-source", lambda W: ["data", "pack", f"hdf5:{W['data']}", W["data"]], ["data.h5"]),
    ]
    # --- outputs inside a dataset folder (the next scan would see them) ------------------------
    fd = lambda W: f"folder:{W['imgs']}"  # noqa: E731
    inside = lambda W, *n: W["imgs"].joinpath(*n)  # noqa: E731
    cases += [
        ("train-out-inside-data", lambda W: ["train", *TINY, "--data", fd(W), "--out", inside(W, "run1")],
         ["--out", "inside the dataset folder", "imgs/run1"]),
        ("train-out-inside-data-itself", lambda W: ["train", *TINY, "--data", fd(W), "--out", inside(W)],
         ["inside the dataset folder"]),
        ("train-out-inside-data-link", lambda W: ["train", *TINY, "--data", fd(W), "--out",
                                                  W["T"] / "imgs-link" / "a" / "run"], ["imgs-link/a/run", "imgs"]),
        ("features-out-inside-data", lambda W: ["features", "--checkpoint", W["T"] / "a", "--data", fd(W),
                                                "--out", inside(W, "feats.h5")], ["--out", "inside the dataset"]),
        ("eval-json-inside-data", lambda W: ["eval", "--checkpoint", W["T"] / "a", "--data", fd(W), "--json",
                                             inside(W, "a", "r.json")], ["--json", "inside the dataset folder"]),
        ("finetune-out-inside-data", lambda W: ["finetune", "--checkpoint", W["T"] / "a", "--data", fd(W),
                                                "--epochs", "1", "--out", inside(W, "ft")], ["--out", "inside"]),
        ("pack-hdf5-inside-data", lambda W: ["data", "pack", fd(W), inside(W, "packed.h5")],
         ["OUT", "inside the dataset folder"]),
        ("pack-wds-inside-data", lambda W: ["data", "pack", fd(W), "--format", "wds", inside(W, "shards")],
         ["OUT", "inside the dataset folder"]),
        ("views-out-inside-data", lambda W: ["views", "--data", fd(W), "--out", inside(W, "b", "v.png")],
         ["--out", "inside the dataset folder"]),
    ]
    # --- checkpoints ---------------------------------------------------------------------------
    cases += [
        ("eval-typo-checkpoint", lambda W: ["eval", "--checkpoint", W["T"] / "a" / "typo.h5"], ["typo.h5"]),
        ("eval-nan-checkpoint", lambda W: ["eval", "--checkpoint", W["T"] / "nan"], ["NaN", "encoder.conv1.weight"]),
        ("export-nan-checkpoint", lambda W: ["export", "--checkpoint", W["T"] / "nan" / "last.h5", "--format",
                                             "npz", "--out", o(W, "nan.npz")], ["NaN"]),
        ("eval-int-checkpoint", lambda W: ["eval", "--checkpoint", W["T"] / "int"], ["int32", "encoder.conv1.weight"]),
        ("resume-nan-checkpoint", lambda W: ["train", *TINY, "--resume", W["T"] / "nan", "--out", W["T"] / "nan"],
         ["NaN"]),
        ("eval-junk-checkpoint", lambda W: ["eval", "--checkpoint", W["T"] / "junk.h5"], ["junk.h5"]),
    ]
    # --- data ----------------------------------------------------------------------------------
    dtr = lambda key, n: (lambda W: ["train", *TINY, "--out", o(W, n), "--data", f"hdf5:{W[key]}"])  # noqa: E731
    cases += [
        ("h5-64x0x0x3", dtr("h5_empty_hw", "h1"), ["(64, 0, 0, 3)", "hw0.h5"]),
        ("h5-label-2**40", dtr("h5_label_2_40", "h2"), ["1099511627776", "l40.h5"]),
        ("h5-float-images", dtr("h5_float", "h3"), ["float32", "f.h5"]),
        ("h5-declared-huge", dtr("h5_huge", "h4"), ["huge.h5"]),  # read lazily: the label count differs
        ("h5-float-labels", dtr("h5_flabels", "h5"), ["fl.h5"]),
        ("h5-declared-1e10-labels", dtr("h5_hugelab", "h10"), ["hugelab.h5", "/labels", "would need"]),
        ("h5-negative-labels", dtr("h5_neg", "h6"), ["neg.h5"]),
        ("h5-5d-images", dtr("h5_5d", "h7"), ["5d.h5"]),
        ("h5-count-mismatch", dtr("h5_count", "h8"), ["count.h5"]),
        ("h5-too-few-classes", dtr("h5_classes", "h9"), ["cls.h5"]),
        ("h5-junk", lambda W: ["data", "show", f"hdf5:{W['T'] / 'junk.h5'}"], ["junk.h5"]),
        ("shapes-10**11", lambda W: ["train", *TINY, "--out", o(W, "sh"), "--data", "shapes:train=100000000000"],
         ["shapes:train=100000000000"]),
        ("shapes-negative", lambda W: ["data", "show", "shapes:train=-5"], ["shapes:train=-5"]),
        ("shapes-text", lambda W: ["data", "show", "shapes:train=abc"], ["shapes:train=abc"]),
        ("spec-empty-folder", lambda W: ["data", "show", "folder:"], ["folder:"]),
        ("mnist-declared-6e7", lambda W: ["data", "show", "mnist", "--root", W["mnist"]],
         ["train-images-idx3-ubyte.gz"]),
        ("mnist-gzip-bomb", lambda W: ["train", *TINY, "--out", o(W, "mn"), "--data", "mnist", "--data-root",
                                       W["mnist2"]], ["train-labels-idx1-ubyte.gz", "longer than"]),
        ("mnist-label-range", lambda W: ["train", *TINY, "--out", o(W, "mn3"), "--data", "mnist", "--data-root",
                                         W["mnist3"]], ["train-labels-idx1-ubyte", "200"]),
        ("cifar-not-a-dict", lambda W: ["train", *TINY, "--out", o(W, "cf10"), "--data", "cifar10",
                                        "--data-root", W["cifar"]], ["data_batch_2"]),
        ("folder-float-image", lambda W: ["train", *TINY, "--out", o(W, "ff"), "--data", f"folder:{W['fimgs']}"],
         ["fimgs/a/f", ".png", "mode F"]),
        ("folder-bomb-1x", lambda W: ["train", *TINY, "--out", o(W, "b1"), "--data", f"folder:{W['bomb1x']}"],
         ["bomb1x/a/huge.png", "10000x10000", "100000000", "MAX_IMAGE_PIXELS", "--skip-bad-images"]),
        ("folder-bomb-2x", lambda W: ["data", "show", f"folder:{W['bomb2x']}"],
         ["bomb2x/a/huge.png", "900000000 pixels", "MAX_IMAGE_PIXELS"]),
        ("folder-bomb-in-memory", lambda W: ["data", "pack", f"folder:{W['bomb1x']}", o(W, "bomb.h5")],
         ["bomb1x/a/huge.png", "10000x10000"]),
        ("folder-bomb-2x-in-memory", lambda W: ["data", "pack", f"folder:{W['bomb2x']}", o(W, "bomb2.h5")],
         ["bomb2x/a/huge.png", "900000000 pixels"]),
        ("wds-bomb", lambda W: ["data", "show", f"wds:{W['wdsbomb']}"], ["000001.png", "10000x10000"]),
        ("cifar10-not-found", lambda W: ["eval", "--checkpoint", W["T"] / "a", "--data", "cifar10", "--data-root",
                                         W["T"] / "cfg"], ["cifar10", "cfg", "; "]),
        ("cifar100-not-found", lambda W: ["data", "show", "cifar100", "--root", W["T"] / "sub"], ["cifar100", "sub"]),
        ("mnist-not-found", lambda W: ["data", "pack", "mnist", o(W, "mn.h5"), "--root", W["T"] / "sub"],
         ["mnist", "sub"]),
        ("data-show-both-splits-fail", lambda W: ["data", "show", f"folder:{W['T'] / 'nowhere'}"], ["nowhere"]),
    ]
    return cases


CASES = _cases()


def test_the_corpus_is_large_enough():
    assert len(CASES) >= 60, len(CASES)
    assert len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gives_a_named_one_line_error(W, case):
    _, build, names = case
    before = {p: p.stat().st_mtime_ns for p in W["T"].rglob("*") if p.is_file()}
    r = cli(*build(W))
    assert_clean_failure(r, *names)
    after = {p: p.stat().st_mtime_ns for p in before if p.exists()}
    assert after == before, "an input of the corpus was modified or removed"


def test_outputs_inside_a_dataset_folder_leave_it_unchanged(W):
    """Every command that writes, pointed inside the folder it reads: refused before anything is
    written, so the folder's tree (names and files) is what it was. On the code before the fix
    train, features, eval --json and data pack wrote into it (new files the next scan sees)."""
    def tree():
        return sorted((str(p.relative_to(W["imgs"])), p.is_file() and p.stat().st_mtime_ns)
                      for p in W["imgs"].rglob("*"))
    before = tree()
    for case in CASES:
        if "inside-data" in case[0]:
            r = cli(*case[1](W))
            assert r.exit_code != 0 and "inside the dataset folder" in r.output, (case[0], r.output)
            assert len([ln for ln in r.output.splitlines() if ln.startswith("Error")]) == 1, r.output
    assert tree() == before


def test_outputs_beside_a_dataset_folder_are_fine(W, tmp_path):
    """The check is about the dataset folder, not about its neighbours or the run folder read."""
    from simclr_xb.outputs import check_output_dir, check_output_file, dataset_folders
    dirs = dataset_folders(f"folder:{W['imgs']}", "shapes", f"hdf5:{W['data']}")
    assert dirs == (str(W["imgs"]),)
    check_output_dir(W["T"] / "imgs-run", data_dirs=dirs)  # a sibling whose name starts alike
    check_output_file(W["T"] / "a" / "feats.h5", inputs=(W["T"] / "a",), data_dirs=dirs)  # in the run folder


def test_multi_line_messages_become_one_line_details_under_debug(W, monkeypatch):
    """A message of several lines (an error raised by a library, a data worker's traceback) is
    printed as one line; the full text follows on stderr only under --debug."""
    import simclr_xb.evaluate as E

    def fail(*a, **k):
        from simclr_xb.data import DataWorkerError
        raise DataWorkerError("a data worker failed on step 3:\nworker 0: Traceback (most recent call last):\n"
                              "  File \"w.py\", line 1, in run\n    decode()\nValueError: broken.png is bad\n")
    monkeypatch.setattr(E, "evaluate", fail)
    out = assert_clean_failure(cli("eval", "--checkpoint", W["T"] / "a"), "step 3: worker 0: ValueError: broken.png")
    assert "--debug" in out and "decode()" not in out
    r = CliRunner().invoke(main, ["--debug", "eval", "--checkpoint", str(W["T"] / "a")])
    assert r.exit_code == 1 and "details:" in r.output and "decode()" in r.output, r.output


def test_fashion_mnist_not_found_is_one_line(W, tmp_path, monkeypatch):
    """(Fashion-MNIST may be installed on the machine: its system folders are left out here.)"""
    import simclr_xb.data.idx as idx
    monkeypatch.setattr(idx, "SYSTEM_DIRS", {k: () for k in idx.SYSTEM_DIRS})
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("SIMCLR_XB_DATA", raising=False)
    r = cli("train", *TINY, "--out", tmp_path / "o", "--data", "fashion-mnist", "--data-root", tmp_path / "none")
    out = assert_clean_failure(r, "'fashion-mnist' not found", "none; ", "cache")
    assert not (tmp_path / "o" / "last.h5").exists(), out


def test_download_failure_is_one_line(tmp_path, monkeypatch):
    import urllib.error
    import urllib.request

    from simclr_xb.data import DataError
    from simclr_xb.data.download import download

    def offline(*a, **k):
        raise urllib.error.URLError("no network in this test")
    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(DataError) as e:
        download("fashion-mnist", tmp_path)
    assert "\n" not in str(e.value) and "no network in this test" in str(e.value), str(e.value)


def test_a_stored_config_with_the_removed_log_every_still_loads(W):
    """Checkpoints and config.json of runs from before train.log_every was removed hold it:
    Config.from_json (the checkpoint reader) drops it; set by a user it is an error."""
    from simclr_xb.config import Config, ConfigError
    d = W["cfg"].to_dict()
    d["train"]["log_every"] = 10
    assert Config.from_json(json.dumps(d)) == W["cfg"]
    with pytest.raises(ConfigError, match="train.log_every.*removed.*train.progress_every_s"):
        Config.from_dict(d)


def test_pixel_limit_is_checked_before_any_pixel_is_decoded(W, tmp_path, monkeypatch):
    """Pillow's MAX_IMAGE_PIXELS (1x) and the memory budget bound the image size; an image over
    it is refused from its header (no ImageFile.load), by the index (also from its cache) and by
    the in-memory reader; with skip_bad_images it is left out with one warning naming it."""
    import warnings

    from PIL import ImageFile

    from simclr_xb.data import DataError, load_folder
    from simclr_xb.data.index import build_folder_index
    monkeypatch.setenv("SIMCLR_XB_INDEX_CACHE", str(tmp_path / "cache"))
    d = tmp_path / "imgs"
    (d / "a").mkdir(parents=True)
    for i, side in enumerate((16, 16, 40)):  # 256, 256, 1600 pixels
        Image.fromarray(np.zeros((side, side, 3), np.uint8)).save(d / "a" / f"{i}-{side}.png")
    assert len(build_folder_index(d)) == 3  # Pillow's default limit: all fit, and are cached
    loads = []
    real_load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda im: loads.append(im) or real_load(im))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 1600 is over 1x, under 2x
    with pytest.raises(DataError, match=r"2-40\.png is 40x40 pixels \(1600 in all\).*limit of 1000 pixels"):
        build_folder_index(d)  # from the cache: the sizes are checked there too
    with pytest.raises(DataError, match=r"2-40\.png is 40x40 pixels"):
        build_folder_index(d, use_cache=False)
    with pytest.raises(DataError, match=r"2-40\.png is 40x40 pixels"):
        load_folder(d)  # the in-memory reader: the two small ones decoded, not the large one
    assert loads and all(im.size == (16, 16) for im in loads)  # the 40x40 one: never loaded
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        ix = build_folder_index(d, skip_bad_images=True)
        ds = load_folder(d, skip_bad_images=True)
    msgs = [str(w.message) for w in got]
    assert len(ix) == 2 and ds.images.shape[0] == 2 and ds.skipped == 1 and len(ix.skipped) == 1
    assert len(msgs) == 2 and all("skipped 1 image(s) over the limit of 1000 pixels" in m and "2-40.png (40x40)"
                                  in m for m in msgs), msgs  # one each, and no DecompressionBombWarning
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # the memory budget: 4 bytes a pixel
    monkeypatch.setenv("SIMCLR_XB_MAX_BYTES", "4000")
    with pytest.raises(DataError, match=r"limit of 1000 pixels \(the memory budget .*SIMCLR_XB_MAX_BYTES"):
        build_folder_index(d)
    monkeypatch.setenv("SIMCLR_XB_MAX_BYTES", str(4 * 1600))
    assert len(build_folder_index(d)) == 3  # exactly at the limit is allowed


def test_train_skips_a_bomb_with_skip_bad_images(W, tmp_path, monkeypatch):
    monkeypatch.setenv("SIMCLR_XB_INDEX_CACHE", str(tmp_path / "cache"))
    r = cli("train", *TINY, "--batch-size", "2", "--set", "train.monitor_every=0", "--data",
            f"folder:{W['bomb1x']}", "--out", tmp_path / "o", "--skip-bad-images")
    assert r.exit_code == 0, r.output
    assert f"warning: skipped 0 undecodable image(s) and 1 over the pixel limit in {W['bomb1x']}" in r.output
    assert (tmp_path / "o" / "last.h5").exists()


def test_pillow_refusal_at_2x_is_a_named_error_or_a_skip(W, tmp_path, monkeypatch):
    """Pillow raises DecompressionBombError at open beyond 2x: the index turns it into the same
    named refusal (it used to escape as an internal error), or a skip."""
    import warnings

    from simclr_xb.data.index import build_folder_index
    from simclr_xb.data.shards import build_shard_index
    monkeypatch.setenv("SIMCLR_XB_INDEX_CACHE", str(tmp_path / "cache"))
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        ix = build_folder_index(W["bomb2x"], skip_bad_images=True)
        sx = build_shard_index(W["wdsbomb"], skip_bad_images=True)
    assert len(ix) == 3 and len(sx) == 1, (len(ix), len(sx))
    msgs = [str(w.message) for w in got]
    assert len(msgs) == 2 and "huge.png (900000000 pixels)" in msgs[0] and "000001.png (10000x10000)" in msgs[1], msgs


# --------------------------------------------------------------------------- correct results
def test_16bit_and_palette_pngs_are_read_correctly(W):
    r = cli("data", "show", f"folder:{W['imgs']}")
    assert r.exit_code == 0 and "Traceback" not in r.output, r.output
    from simclr_xb.data import load_dataset
    ds = load_dataset(f"folder:{W['imgs']}", image_size=16)
    grey = ds.images[ds.labels == 0]
    assert grey.max() == 255 and len(np.unique(grey)) > 200  # not saturated to {0, 255}


def test_init_from_starts_a_new_run_recorded_in_its_config(W, tmp_path):
    out = tmp_path / "new"
    r = cli("train", *TINY, "--data", f"hdf5:{W['data']}", "--out", out, "--init-from", W["T"] / "a",
            "--epochs", "3")
    assert r.exit_code == 0, r.output
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["train"]["init_from"] == str(W["T"] / "a") and cfg["train"]["epochs"] == 3
    run = json.loads((out / "run.json").read_text())
    assert run["init_from"] == str(W["T"] / "a") and run["resumed_from"] is None and len(run["run_id"]) == 32
    from simclr_xb.checkpoint import load_checkpoint
    ck = load_checkpoint(out / "last.h5")
    assert ck.step == 1 and ck.config.train.init_from == str(W["T"] / "a")
    # the weights really started from the source: the first step moved them only a little
    src = load_checkpoint(W["T"] / "a" / "last.h5").weights["encoder.conv1.weight"]
    rnd = init_weights(W["cfg"].model, 0)["encoder.conv1.weight"]
    got = ck.weights["encoder.conv1.weight"]
    assert np.abs(got - src).max() < np.abs(rnd - init_weights(W["cfg"].model, 5)["encoder.conv1.weight"]).max()


# --------------------------------------------------------------------------- the error boundary
def test_internal_error_is_one_line_and_traceback_only_with_debug(W, monkeypatch):
    import simclr_xb.evaluate as E

    def boom(*a, **k):
        raise ZeroDivisionError("division by zero in a test")
    monkeypatch.setattr(E, "evaluate", boom)
    r = cli("eval", "--checkpoint", W["T"] / "a")
    assert r.exit_code == 1 and "Traceback" not in r.output, r.output
    line = [l for l in r.output.splitlines() if "internal error" in l]
    assert len(line) == 1 and "ZeroDivisionError" in line[0] and "--debug" in line[0] and "report" in line[0]
    r = CliRunner().invoke(main, ["--debug", "eval", "--checkpoint", str(W["T"] / "a")])
    assert r.exit_code == 1 and "Traceback" in r.output and "internal error" in r.output
    monkeypatch.setenv("SIMCLR_XB_DEBUG", "1")
    r = cli("eval", "--checkpoint", W["T"] / "a")
    assert "Traceback" in r.output


def _subprocess(*args, env=None):
    code = ("import sys; from simclr_xb.cli import main; sys.argv[0] = 'simclr-xb'; main()")
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                          env=dict(os.environ, **(env or {})), timeout=300)


def test_real_exit_status_and_no_traceback_in_subprocesses(W, tmp_path):
    for args, name in [
            (["train", "--out", tmp_path / "x", "--set", "optim.warmup_epochs=inf"], "optim.warmup_epochs"),
            (["eval", "--checkpoint", W["T"] / "a", "--json", tmp_path / "no" / "dir" / "r.json"], "no/dir"),
            (["train", *TINY, "--out", tmp_path / "y", "--device", "cuda:5"], "--device")]:
        p = _subprocess(*args)
        assert p.returncode == 1, (p.returncode, p.stderr)
        assert "Traceback" not in p.stderr + p.stdout and name in p.stderr, p.stderr
        assert "encoding" not in p.stderr  # nothing was evaluated before the output was checked
    code = ("import sys, simclr_xb.evaluate as E\n"
            "def boom(*a, **k): raise KeyError('x')\n"
            "E.evaluate = boom\nfrom simclr_xb.cli import main\nmain()")
    p = subprocess.run([sys.executable, "-c", code, "eval", "--checkpoint", str(W["T"] / "a")],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 1 and "Traceback" not in p.stderr and "internal error (KeyError" in p.stderr


# --------------------------------------------------------------------------- data loss (fail on main)
def _snapshot(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_resume_into_another_run_destroys_nothing(tmp_path, W):
    cfg = W["cfg"]
    a, b = tmp_path / "a", tmp_path / "b"
    w = lambda seed: init_weights(cfg.model, seed, num_classes=4)  # noqa: E731 - with the online probe
    save_rolling(a, Checkpoint(config=cfg, weights=w(0), step=2), keep=2)
    for s in (2, 4, 6):
        save_rolling(b, Checkpoint(config=cfg, weights=w(1), step=s), keep=3)
    (b / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in range(1, 7)))
    before = _snapshot(b)
    r = cli("train", *TINY, "--resume", a, "--out", b, "--data", f"hdf5:{W['data']}")
    assert r.exit_code != 0 and "another run" in r.output and "Traceback" not in r.output, r.output
    assert _snapshot(b) == before


def test_export_never_overwrites_its_checkpoint(tmp_path, W):
    cfg = W["cfg"]
    save_rolling(tmp_path / "r", Checkpoint(config=cfg, weights=init_weights(cfg.model, 0), step=2), keep=2)
    ck = tmp_path / "r" / "ckpt-00000002.h5"
    before = ck.read_bytes()
    for out in (ck, tmp_path / "r" / "last.h5"):  # the file itself, and its hard link
        r = cli("export", "--checkpoint", ck, "--format", "npz", "--out", out)
        assert r.exit_code != 0 and "inputs" in r.output, r.output
    assert ck.read_bytes() == before


def test_features_never_overwrite_the_dataset(tmp_path, W):
    data = tmp_path / "d.h5"
    data.write_bytes(W["data"].read_bytes())
    before = data.read_bytes()
    r = cli("features", "--checkpoint", W["T"] / "a", "--data", f"hdf5:{data}", "--split", "train",
            "--out", data)
    assert r.exit_code != 0 and "inputs" in r.output, r.output
    assert data.read_bytes() == before


def test_atomic_write_never_replaces_a_fifo(tmp_path, W):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(CheckpointError, match="FIFO"):
        atomic_write(fifo, lambda tmp: Path(tmp).write_text("x"))
    assert fifo.is_fifo()
    r = cli("export", "--checkpoint", W["T"] / "a", "--format", "npz", "--out", fifo)
    assert r.exit_code != 0 and fifo.is_fifo(), r.output
