"""`simclr-xb views` (simclr_xb/views.py): the PNG's tiles are, pixel for pixel, the backend's
augment output for the parameters the training step draws (sample_pair at that step, the
loader's batch), for one backend and for torch and mlx side by side; bad output paths fail
with one line and leave the inputs alone."""
from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from simclr_xb.augment import sample_pair
from simclr_xb.cli import main
from simclr_xb.config import preset
from simclr_xb.data import BatchLoader, load_dataset
from simclr_xb.views import describe, to_uint8, views_command

pytest.importorskip("torch")
SPEC = "shapes:train=64,test=16"


def cfg_(*overrides):
    return preset("tiny").with_overrides([f"data.name={SPEC}", "train.batch_size=16", *overrides])


def tiles_of(png, tile):
    """The view pixels drawn at ``tile``: every scale-th pixel of its block (and the block must
    be exactly those pixels repeated)."""
    a = np.asarray(Image.open(png).convert("RGB"))
    k, S = tile.scale, tile.side
    block = a[tile.y:tile.y + S * k, tile.x:tile.x + S * k]
    view = block[::k, ::k]
    np.testing.assert_array_equal(block, view.repeat(k, axis=0).repeat(k, axis=1))
    return view


def expected(cfg, backend, n, step):
    """What training step ``step`` feeds the backend (first n images), computed here from the
    loader and sampler directly, and the backend's augment of it."""
    from simclr_xb.backend import get_backend
    ds = load_dataset(cfg.data.name, "train")
    loader = BatchLoader(ds.images, ds.labels, cfg.train.batch_size, seed=cfg.train.seed, num_workers=0)
    spe = loader.steps_per_epoch
    idx = loader.indices(step // spe, step % spe)[:n]
    p1, p2 = sample_pair(cfg.augment, cfg.train.batch_size, ds.images.shape[1:3], cfg.train.seed,
                         step // spe, step, 0)
    api = get_backend(backend)
    imgs = ds.images[idx]
    return idx, p1[:n], p2[:n], [to_uint8(api.augment(imgs, p, cfg.augment, "float32")) for p in (p1[:n], p2[:n])]


@pytest.mark.parametrize("backends", [("torch",), ("torch", "mlx")])
def test_png_pixels_are_the_backend_augment_output_for_the_stated_parameters(tmp_path, backends,
                                                                            one_torch_thread):
    if "mlx" in backends:
        pytest.importorskip("mlx.core", reason="MLX is not installed")
    cfg, n, step = cfg_(), 5, 6  # step 6: epoch 1 (4 steps per epoch), step 2 of it
    out = tmp_path / "views.png"
    pic = views_command(cfg, out, n=n, step=step, backends=backends)
    for b in backends:
        idx, p1, p2, want = expected(cfg, b, n, step)
        np.testing.assert_array_equal(pic.indices, idx)
        for r in range(n):
            for v in (1, 2):
                got = tiles_of(out, pic.tiles[(r, b, v)])
                np.testing.assert_array_equal(got, want[v - 1][r], err_msg=f"{b} row {r} view {v}")
            # negative control: the other view's parameters give other pixels
            assert not np.array_equal(tiles_of(out, pic.tiles[(r, b, 1)]), want[1][r])
        assert describe(p1, 0)[0] == "crop t{} l{} h{} w{}".format(*p1.crop[0])
    if len(backends) == 2:
        assert len(pic.max_abs_diff) == n and 0 <= max(pic.max_abs_diff) < 1e-4


def test_cli_writes_the_png_and_refuses_to_overwrite_inputs(tmp_path):
    r = CliRunner()
    out = tmp_path / "v.png"
    res = r.invoke(main, ["views", "--data", SPEC, "--batch-size", "16", "--n", "3", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "wrote" in res.output and Image.open(out).size[0] > 0
    # an input file as --out: the config file, a dataset file
    conf_toml = tmp_path / "c.toml"
    conf_toml.write_text('[train]\nseed = 1\n')
    res = r.invoke(main, ["views", "--data", SPEC, "--batch-size", "16", "--config", str(conf_toml),
                          "--out", str(conf_toml)])
    assert res.exit_code != 0 and "must name a .png" in res.output
    data = tmp_path / "data.png"
    data.write_bytes(b"not really hdf5")
    res = r.invoke(main, ["views", "--data", f"hdf5:{data}", "--out", str(data)])
    assert res.exit_code != 0 and "is an input of this command" in res.output, res.output
    assert data.read_bytes() == b"not really hdf5"
    # an image folder dataset: --out inside it would add an image to it
    root = tmp_path / "pics"
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(8):
            Image.fromarray(np.full((12, 12, 3), 30 * i, np.uint8)).save(root / c / f"{i}.png")
    before = sorted(p.name for p in (root / "a").iterdir())
    res = r.invoke(main, ["views", "--data", f"folder:{root}", "--batch-size", "16", "--n", "2",
                          "--out", str(root / "a" / "views.png")])
    assert res.exit_code != 0 and "inside the dataset folder" in res.output, res.output
    assert sorted(p.name for p in (root / "a").iterdir()) == before
    assert len(res.output.strip().splitlines()) == 1  # one line, no traceback


@pytest.mark.parametrize("args, message", [
    (["--n", "17"], "expected 1 <= n <= train.batch_size (16)"),
    (["--n", "0"], "expected 1 <= n <= train.batch_size"),
    (["--backends", "torch,jax"], "unknown backend 'jax'"),
    (["--backends", "torch,torch"], "expected one or two of torch, mlx"),
    (["--step", "-1"], "expected a step >= 0"),
])
def test_bad_options_fail_with_one_line(tmp_path, args, message):
    res = CliRunner().invoke(main, ["views", "--data", SPEC, "--batch-size", "16", "--out",
                                    str(tmp_path / "v.png"), *args])
    assert res.exit_code != 0 and message in res.output, res.output
    assert not (tmp_path / "v.png").exists()


def test_streamed_folder_views_are_the_training_loaders_cuts_augmented(tmp_path, one_torch_thread):
    """folder: data streams images of mixed sizes: the picture's views are the backend's
    augment_cropped of the cuts the training loader's workers make at that step."""
    from simclr_xb.backend import get_backend
    from simclr_xb.data import open_dataset
    from simclr_xb.train import stream_train_loader
    rng = np.random.default_rng(0)
    root = tmp_path / "pics"
    for c in ("a", "b"):
        for split in ("train", "test"):
            (root / split / c).mkdir(parents=True)
            for i in range(6):
                h, w = int(rng.integers(20, 50)), int(rng.integers(20, 50))
                Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / split / c / f"{i}.png")
    cfg = preset("tiny").with_overrides([f"data.name=folder:{root}", "train.batch_size=8", "data.num_workers=0"])
    out = tmp_path / "v.png"
    pic = views_command(cfg, out, n=3, step=1, backends=("torch",))
    ds = open_dataset(cfg.data.name, "train")
    assert getattr(ds, "is_stream", False)
    loader = stream_train_loader(cfg, ds, 8, 0, 1)
    try:
        b = next(iter(loader.epoch(1 // loader.steps_per_epoch, start_step=1 % loader.steps_per_epoch)))
    finally:
        loader.close()
    api = get_backend("torch")
    for v in (1, 2):
        cut = b.views[(v - 1) * 8:(v - 1) * 8 + 3]
        want = to_uint8(api.augment_cropped(cut, b.params[v - 1][:3], cfg.augment, "float32"))
        for r in range(3):
            np.testing.assert_array_equal(tiles_of(out, pic.tiles[(r, "torch", v)]), want[r])
    np.testing.assert_array_equal(pic.indices, b.indices[:3])
