"""Quality benchmark: linear-probe and kNN accuracy of SimCLR's h against epochs of
pre-training, beside the two baselines every number is compared with (a random-init encoder
of the same architecture, and raw pixels), on ``shapes`` and Fashion-MNIST.

For each dataset: one :func:`simclr_xb.train.train` run of the tiny preset (ResNet-18 width
16, CIFAR stem) with a checkpoint after every epoch, then :func:`simclr_xb.evaluate.evaluate`
(L-BFGS linear probe and weighted kNN, train split -> test split) on the checkpoints of
:data:`BUDGETS` ``eval_epochs``. Epoch 0 is the random-init encoder: the run starts from
exactly those weights (``init_weights(cfg.model, cfg.train.seed)``).
Writes one PNG (:func:`simclr_xb.plot.line_chart` per dataset, stacked).
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from simclr_xb.config import preset

from .common import Report

# Budgets, stated: dataset spec -> epochs of pre-training and the epochs evaluated.
# shapes: the demo's budget (10 epochs of the tiny preset, ~7 min on 2 cores in bf16);
# Fashion-MNIST: 3 epochs (~15 CPU-minutes of pre-training) at its native 28 px.
BUDGETS = {
    "shapes": {"epochs": 10, "eval_epochs": (1, 2, 5, 10), "overrides": {}},
    "fashion-mnist": {"epochs": 3, "eval_epochs": (1, 2, 3),
                      "overrides": {"augment.image_size": 28}},
}
# The smoke-test size: seconds, not minutes.
TINY_BUDGETS = {
    "shapes:train=64,test=40": {"epochs": 2, "eval_epochs": (2,),
                                "overrides": {"model.width": 0.125, "augment.image_size": 16,
                                              "train.batch_size": 32, "model.head_out": 16}},
}


def _config(spec: str, budget: dict, precision: str, seed: int):
    cfg = preset("tiny").with_value("data.name", spec).with_value("train.epochs", budget["epochs"])
    cfg = cfg.with_value("train.precision", precision).with_value("train.seed", seed)
    for k, v in budget["overrides"].items():
        cfg = cfg.with_value(k, v)
    return cfg.validate()


def _resumable(run_dir: Path, cfg) -> Path | None:
    """``run_dir`` if it holds a run of exactly this config (resume it: same trajectory),
    else None after deleting any other run's checkpoints there."""
    from simclr_xb.checkpoint import CheckpointError, load_checkpoint
    last = run_dir / "last.h5"
    if not last.exists():
        return None
    try:
        if load_checkpoint(last).config.to_dict() == cfg.to_dict():
            return run_dir
    except CheckpointError:
        pass
    for old in run_dir.glob("*.h5"):
        old.unlink()
    (run_dir / "metrics.jsonl").unlink(missing_ok=True)
    (run_dir / "run.json").unlink(missing_ok=True)  # the folder's run identity (simclr_xb.outputs)
    return None


def _scores(res: dict) -> dict:
    return {"linear_top1": res["linear"]["top1"], "knn_top1": res["knn"]["top1"],
            "linear_l2": res["linear"]["l2"], "eval_s": res["wall_s"]}


def run(size: str = "full", backend: str = "torch", datasets: list[str] | None = None,
        work_dir: str | Path = "runs/bench-quality", precision: str | None = None, seed: int = 0,
        plot_path: str | Path | None = None, device: str | None = None, log=print, **_) -> Report:
    """Train, evaluate the checkpoints and the baselines; returns the report (rows: one per
    (dataset, features, epoch)). ``precision`` defaults to bfloat16 autocast on torch
    (float32 on mlx: its bf16 step is untested on Metal and slow on the CPU)."""
    from simclr_xb.checkpoint import load_checkpoint
    from simclr_xb.data import load_dataset
    from simclr_xb.evaluate import evaluate
    from simclr_xb.train import train

    budgets = TINY_BUDGETS if size == "tiny" else BUDGETS
    if datasets:
        budgets = {k: v for k, v in budgets.items() if k.split(":")[0] in datasets or k in datasets}
    precision = precision or ("bfloat16" if backend == "torch" else "float32")
    work_dir = Path(work_dir)
    rows, skipped, charts = [], {}, []
    for spec, budget in budgets.items():
        cfg = _config(spec, budget, precision, seed)
        try:
            train_ds = load_dataset(spec, "train", root=cfg.data.root)
        except Exception as e:  # noqa: BLE001 - a missing dataset is reported, not fatal
            skipped[spec] = f"{type(e).__name__}: {e}"
            log(f"quality: skipping {spec}: {e}")
            continue
        spe = len(train_ds) // cfg.train.batch_size
        cfg = cfg.with_value("train.checkpoint_every", spe).with_value(
            "train.keep_last", budget["epochs"] + 1).validate()
        run_dir = work_dir / spec.split(":")[0]
        resume = _resumable(run_dir, cfg)
        log(f"quality: pre-training on {spec} for {budget['epochs']} epochs ({spe} steps each)"
            + (f", resuming {run_dir}" if resume else "") + " ...")
        t0 = time.perf_counter()
        res = train(cfg, run_dir, backend=backend, resume=resume, show_progress=False, device=device,
                    dataset=train_ds, log=lambda m: None)
        train_s = time.perf_counter() - t0
        if res.stopped == "signal":
            raise KeyboardInterrupt(f"quality: pre-training on {spec} interrupted at step {res.step}")
        quiet = dict(backend=backend, log=lambda m: None)
        base = {"dataset": spec, "n_train": len(train_ds), "epochs_budget": budget["epochs"],
                "train_s_this_call": round(train_s, 1), "resumed": resume is not None}
        rnd = evaluate(cfg, None, spec, **quiet)
        rows.append({**base, "features": "random-init encoder", "epoch": 0, **_scores(rnd)})
        if size != "tiny":  # tiny: an L-BFGS fit on 3072 raw pixels outlasts the whole smoke test
            raw = evaluate(cfg, None, spec, raw_pixels=True, **quiet)
            rows.append({**base, "features": "raw pixels", "epoch": 0, **_scores(raw)})
        rows.append({**base, "features": "SimCLR encoder", "epoch": 0, "step": 0, **_scores(rnd)})
        for ep in budget["eval_epochs"]:
            ck = load_checkpoint(run_dir / f"ckpt-{ep * spe:08d}.h5")
            r = evaluate(ck.config, ck.weights, spec, **quiet)
            rows.append({**base, "features": "SimCLR encoder", "epoch": ep, "step": ck.step, **_scores(r)})
            log(f"quality: {spec} epoch {ep}: linear {r['linear']['top1']:.2f}%, kNN {r['knn']['top1']:.2f}%")
        charts.append(_chart(spec, [r for r in rows if r["dataset"] == spec], budget["epochs"]))
    if plot_path and charts:
        from simclr_xb.plot import stack
        Path(plot_path).parent.mkdir(parents=True, exist_ok=True)
        stack(charts).save(plot_path)
    settings = {"size": size, "backend": backend, "precision": precision, "seed": seed,
                "budgets": {k: {**v, "eval_epochs": list(v["eval_epochs"])} for k, v in budgets.items()},
                "preset": "tiny", "model": dataclasses.asdict(preset("tiny").model),
                "eval": "L-BFGS linear probe (l2 picked on a held-out 10%), kNN k=200 tau=0.1",
                "skipped": skipped, "plot": str(plot_path) if plot_path else None}
    return Report("quality", settings, rows)


def _chart(spec: str, rows: list[dict], epochs: int):
    from simclr_xb.plot import line_chart
    series = {}
    sim = sorted((r for r in rows if r["features"] == "SimCLR encoder"), key=lambda r: r["epoch"])
    series["SimCLR linear"] = ([r["epoch"] for r in sim], [r["linear_top1"] for r in sim])
    series["SimCLR kNN"] = ([r["epoch"] for r in sim], [r["knn_top1"] for r in sim])
    for feat, short in (("random-init encoder", "random init"), ("raw pixels", "raw pixels")):
        r = next((r for r in rows if r["features"] == feat), None)
        if r is None:
            continue
        series[f"{short} linear"] = ([0, epochs], [r["linear_top1"]] * 2)
        series[f"{short} kNN"] = ([0, epochs], [r["knn_top1"]] * 2)
    return line_chart(series, f"{spec}: test accuracy of frozen features (epoch 0 = random init)",
                      "pre-training epochs", "top-1 %")
