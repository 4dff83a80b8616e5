"""Evaluation of frozen representations: linear probe and weighted kNN, in numpy.

* Linear evaluation (SimCLR sec. 2 and B.6): a multinomial logistic regression trained on
  frozen h. We fit it with L-BFGS on standardised features with a small L2 penalty chosen
  on a held-out 10% of the training split (the paper's transfer protocol: L2-regularised
  multinomial logistic regression with L-BFGS), then refit on the whole training split.
* kNN monitor (Wu et al. 2018; common in public libraries, not in the paper): cosine
  similarity, k = 200 neighbours, votes weighted by exp(sim / 0.1).

Both work on any features, so the same functions score SimCLR's h, a random-init encoder's
h and raw pixels (the baselines every result is compared with).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .augment import STREAM_SHUFFLE


@dataclass
class ProbeResult:
    top1: float
    top5: float | None
    l2: float
    iterations: int

    def to_dict(self) -> dict:
        return asdict(self)


def topk_accuracy(scores: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Fraction of rows whose label is among the k highest scores (percent)."""
    k = min(k, scores.shape[1])
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    return float(100.0 * np.mean((top == labels[:, None]).any(axis=1)))


def _softmax_loss_grad(w: np.ndarray, x: np.ndarray, y1h: np.ndarray, l2: float):
    """Mean cross-entropy + l2/2 |W|^2 (bias unpenalised) and its gradient; w packs (d+1, C)."""
    logits = x @ w[:-1] + w[-1]
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    p /= p.sum(axis=1, keepdims=True)
    n = len(x)
    loss = -np.sum(y1h * np.log(np.maximum(p, 1e-300))) / n + 0.5 * l2 * np.sum(w[:-1] ** 2)
    d = (p - y1h) / n
    g = np.empty_like(w)
    g[:-1] = x.T @ d + l2 * w[:-1]
    g[-1] = d.sum(axis=0)
    return loss, g


def lbfgs(fun, w0: np.ndarray, max_iter: int = 300, memory: int = 10, tol: float = 1e-6):
    """Minimise ``fun(w) -> (loss, grad)`` with L-BFGS (two-loop recursion, Armijo backtracking).
    Returns (w, iterations)."""
    w = w0.copy()
    f, g = fun(w)
    s_hist: list[np.ndarray] = []
    y_hist: list[np.ndarray] = []
    it = 0
    for it in range(1, max_iter + 1):  # noqa: B007 - the count is returned after the loop
        q = g.copy()
        alphas = []
        for s, y in zip(reversed(s_hist), reversed(y_hist)):
            a = np.vdot(s, q) / np.vdot(y, s)
            alphas.append(a)
            q -= a * y
        if s_hist:
            q *= np.vdot(s_hist[-1], y_hist[-1]) / np.vdot(y_hist[-1], y_hist[-1])
        for (s, y), a in zip(zip(s_hist, y_hist), reversed(alphas)):
            b = np.vdot(y, q) / np.vdot(y, s)
            q += (a - b) * s
        direction = -q
        slope = np.vdot(g, direction)
        if slope >= 0:  # not a descent direction: restart from steepest descent
            s_hist.clear(), y_hist.clear()
            direction, slope = -g, -np.vdot(g, g)
        step = 1.0
        while True:
            w_new = w + step * direction
            f_new, g_new = fun(w_new)
            if f_new <= f + 1e-4 * step * slope or step < 1e-10:
                break
            step *= 0.5
        s, y = w_new - w, g_new - g
        if np.vdot(s, y) > 1e-12:
            s_hist.append(s), y_hist.append(y)
            if len(s_hist) > memory:
                s_hist.pop(0), y_hist.pop(0)
        converged = abs(f - f_new) <= tol * max(1.0, abs(f))
        w, f, g = w_new, f_new, g_new
        if converged or np.max(np.abs(g)) < tol:
            break
    return w, it


def _fit(x, y, num_classes, l2, max_iter):
    y1h = np.eye(num_classes)[y]
    w0 = np.zeros((x.shape[1] + 1, num_classes))
    return lbfgs(lambda w: _softmax_loss_grad(w, x, y1h, l2), w0, max_iter=max_iter)


def linear_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                 num_classes: int | None = None, l2_grid=(1e-5, 1e-4, 1e-3, 1e-2),
                 max_iter: int = 300, seed: int = 0) -> ProbeResult:
    """Multinomial logistic regression on frozen features; returns test top-1/top-5 (percent)."""
    train_x = np.asarray(train_x, np.float64)
    test_x = np.asarray(test_x, np.float64)
    train_y = np.asarray(train_y, np.int64)
    test_y = np.asarray(test_y, np.int64)
    if train_x.ndim != 2 or test_x.ndim != 2 or train_x.shape[1] != test_x.shape[1]:
        raise ValueError(f"features must be (N, d) with the same d: got train {train_x.shape}, "
                         f"test {test_x.shape}")
    num_classes = num_classes or int(max(train_y.max(), test_y.max()) + 1)
    mean, std = train_x.mean(axis=0), train_x.std(axis=0) + 1e-6
    tr, te = (train_x - mean) / std, (test_x - mean) / std
    # choose l2 on a held-out 10% of the training split
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, STREAM_SHUFFLE, 0xE7A1])))
    perm = rng.permutation(len(tr))
    n_val = max(1, len(tr) // 10)
    val, fit = perm[:n_val], perm[n_val:]
    best_l2, best_acc = l2_grid[0], -1.0
    if len(l2_grid) > 1:
        for l2 in l2_grid:
            w, _ = _fit(tr[fit], train_y[fit], num_classes, l2, max_iter)
            acc = topk_accuracy(tr[val] @ w[:-1] + w[-1], train_y[val], 1)
            if acc > best_acc:
                best_l2, best_acc = l2, acc
    w, iters = _fit(tr, train_y, num_classes, best_l2, max_iter)
    scores = te @ w[:-1] + w[-1]
    return ProbeResult(top1=topk_accuracy(scores, test_y, 1),
                       top5=topk_accuracy(scores, test_y, 5) if num_classes > 5 else None,
                       l2=best_l2, iterations=iters)


def knn_classify(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                 k: int = 200, temperature: float = 0.1, num_classes: int | None = None,
                 chunk: int = 1024) -> dict:
    """Weighted kNN on cosine similarity (Wu et al. 2018): top-1/top-5 in percent."""
    num_classes = num_classes or int(max(train_y.max(), test_y.max()) + 1)
    tr = train_x / (np.linalg.norm(train_x, axis=1, keepdims=True) + 1e-12)
    te = test_x / (np.linalg.norm(test_x, axis=1, keepdims=True) + 1e-12)
    k = min(k, len(tr))
    scores = np.zeros((len(te), num_classes))
    for i in range(0, len(te), chunk):
        sim = te[i:i + chunk] @ tr.T
        idx = np.argpartition(-sim, k - 1, axis=1)[:, :k]
        w = np.exp(np.take_along_axis(sim, idx, axis=1) / temperature)
        votes = np.zeros((len(sim), num_classes))
        np.add.at(votes, (np.arange(len(sim))[:, None], train_y[idx]), w)
        scores[i:i + chunk] = votes
    return {"top1": topk_accuracy(scores, test_y, 1),
            "top5": topk_accuracy(scores, test_y, 5) if num_classes > 5 else None,
            "k": k, "temperature": temperature}


def raw_pixel_features(images_u8: np.ndarray) -> np.ndarray:
    """The raw-pixel baseline: flattened pixels in [0, 1]."""
    return images_u8.reshape(len(images_u8), -1).astype(np.float32) / 255.0


# --------------------------------------------------------------------------- pipelines


def encoder_weights(weights: dict, model_cfg) -> dict:
    """The encoder + head entries of a canonical dict (drops the probe and optimiser state)."""
    from .resnet_spec import model_specs
    names = {s.name for s in model_specs(model_cfg)}
    return {k: v for k, v in weights.items() if k in names}


def pick_backend(preferred: str | None, fallback: str | None = None) -> str:
    """``preferred`` if given, else ``fallback`` (e.g. the checkpoint's) if importable, else the
    first importable backend."""
    from .backend import BACKENDS, BackendUnavailable, get_backend
    if preferred:
        get_backend(preferred)
        return preferred
    for name in ([fallback] if fallback else []) + list(BACKENDS):
        try:
            get_backend(name)
            return name
        except BackendUnavailable:
            continue
    raise BackendUnavailable("no backend is installed: pip install 'simclr-xb[torch]' or '[mlx]'")


def evaluate(cfg, weights: dict | None, data_spec: str | None = None, backend: str | None = None,
             device: str | None = None, knn_k: int = 200, knn_t: float = 0.1, batch_size: int = 256,
             root: str | None = None, raw_pixels: bool = False, limit_train: int | None = None,
             log=print) -> dict:
    """Linear probe and kNN on frozen h of the encoder ``weights`` (None: random init from
    ``cfg.train.seed``), trained on the train split and scored on the test split."""
    import time

    from .backend import get_backend
    from .data import open_dataset
    from .data.stream import encode_split
    from .train import stream_resample

    t0 = time.perf_counter()
    if cfg.train.precision == "bfloat16":  # bf16 is a training mode; features are float32
        cfg = cfg.with_value("train.precision", "float32")
    spec = data_spec or cfg.data.name
    train_ds = open_dataset(spec, "train", root=root or cfg.data.root, skip_bad_images=cfg.data.skip_bad_images)
    test_ds = open_dataset(spec, "test", root=root or cfg.data.root, skip_bad_images=cfg.data.skip_bad_images)
    stream = getattr(train_ds, "is_stream", False)
    if limit_train and stream:
        train_ds = train_ds.subset(np.arange(min(limit_train, len(train_ds))))
    elif limit_train:
        train_ds.images, train_ds.labels = train_ds.images[:limit_train], train_ds.labels[:limit_train]
    num_classes = len(train_ds.classes)
    out: dict = {"data": spec, "n_train": int(len(train_ds.labels)), "n_test": int(len(test_ds.labels)),
                 "num_classes": num_classes}
    if raw_pixels and stream:
        raise ValueError(f"raw-pixel features need images of one size; {spec} streams images of "
                         f"mixed sizes (pack it to HDF5 at one size first: simclr-xb data pack)")
    tr_y, te_y = train_ds.labels, test_ds.labels
    if raw_pixels:
        tr, te = raw_pixel_features(train_ds.images), raw_pixel_features(test_ds.images)
        out["features"] = "raw pixels"
    else:
        backend = pick_backend(backend)
        trainer = get_backend(backend).Trainer(cfg, None, device=device, encode_only=True)
        if weights is not None:
            trainer.load_state_dict(encoder_weights(weights, cfg.model))
        log(f"encoding {out['n_train']} + {out['n_test']} images with the {backend} backend on "
            f"{trainer.device} ...")
        enc = dict(batch_size=batch_size, size=cfg.augment.image_size, num_workers=cfg.data.num_workers,
                   resample=stream_resample(cfg), skip_bad_images=cfg.data.skip_bad_images,
                   resize=cfg.data.resize)
        tr, tr_y = encode_split(trainer, train_ds, **enc)
        te, te_y = encode_split(trainer, test_ds, **enc)
        out.update(features="random-init encoder h" if weights is None else "encoder h",
                   backend=backend, feature_dim=int(tr.shape[1]))
    out["linear"] = linear_probe(tr, tr_y, te, te_y, num_classes, seed=cfg.train.seed).to_dict()
    out["knn"] = knn_classify(tr, tr_y, te, te_y, k=knn_k,
                              temperature=knn_t, num_classes=num_classes)
    out["wall_s"] = round(time.perf_counter() - t0, 2)
    return out


def format_result(r: dict, label: str) -> str:
    lin, knn = r["linear"], r["knn"]
    t5 = f", top-5 {lin['top5']:.2f}%" if lin.get("top5") is not None else ""
    k5 = f", top-5 {knn['top5']:.2f}%" if knn.get("top5") is not None else ""
    return (f"{label}: linear probe top-1 {lin['top1']:.2f}%{t5} (l2 {lin['l2']:g}) | "
            f"kNN(k={knn['k']}) top-1 {knn['top1']:.2f}%{k5}")
