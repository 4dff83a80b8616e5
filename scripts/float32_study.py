"""The measurements behind docs/float32.md: why float32 multi-step training drifts from the
float64 oracle, and how far it may drift on any BLAS or device.

    python scripts/float32_study.py                  # the train_step.5 case as defined now
    python scripts/float32_study.py --lrs 0.1,0.08,0.06,0.04,0.02   # the case before 2026-12-01
    python scripts/float32_study.py --json out.json --runs 20

For the 5-step case it prints:
1. each backend's float32 trajectory against the oracle, step by step (max abs over the loss,
   weights, BN buffers and momenta so far, and the entry where it is largest);
2. ONE float32 step of each backend from the oracle's own state at every step (a defect in any
   op would show here; conditioning does not);
3. the oracle run (float64) from a backend's float32 state after step 1: if the oracle itself
   ends as far away, the amplification is the exact dynamics', not the backend's;
4. the oracle's own spread: ``--runs`` trajectories from the start rounded 1 ulp up/down at
   random (float32-rounded perturbations of the same start), and ``--runs`` trajectories whose
   conv and BN outputs and conv gradients are rounded to float32 with a random ulp (what a float32
   implementation on another BLAS or device may do); max and median abs deviation from the
   unperturbed oracle;
5. the smallest |ReLU input| of the oracle's forward at each step (a float32 sign flip there
   changes a gradient by a finite amount);
6. the negative controls' effect (oracle with the bug vs without): a 1% error in one gradient,
   BN backward with the unbiased variance, BN running_var with the biased variance.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from simclr_xb import reference as R
from simclr_xb.backend import BackendUnavailable, get_backend
from simclr_xb.conformance.cases import MULTI_STEP_LRS, _step_args
from simclr_xb.conformance.compare import flatten
from simclr_xb.conformance.faults import Patched, bn_backward_unbiased, bn_running_var_biased, grad_error

NEG_GRADS = ("encoder.bn1.weight", "encoder.layer2.0.bn1.bias", "encoder.layer4.1.bn2.weight",
             "head.1.bn.weight")


def to64(d):
    return {k: (v.astype(np.float64) if np.asarray(v).dtype.kind == "f" else v) for k, v in d.items()}


def f32(d):
    return {k: (np.asarray(v).astype(np.float32) if np.asarray(v).dtype.kind == "f" else v)
            for k, v in d.items()}


def oracle_step(w, m, *a):
    return R.train_step(to64(w), to64(m), *a)


def trajectory(step, w, mom, images, views, lrs, cfg, keep=False):
    """{"losses", "weights", "momenta"} after the steps; with keep, the list after each step."""
    losses, states = [], []
    for (p1, p2), lr in zip(views, lrs):
        loss, w, mom = step(w, mom, images, p1, p2, lr, cfg)
        losses.append(loss)
        states.append({"losses": np.array(losses), "weights": w, "momenta": mom})
    return states if keep else states[-1]


def worst(a, b) -> tuple[str, float]:
    fa, fb = flatten(a), flatten(b)
    e = {k: float(np.max(np.abs(fa[k] - fb[k]))) if fa[k].size else 0.0 for k in fa}
    k = max(e, key=e.get)
    return k, e[k]


def _ulp_jitter(a, rng):
    """a rounded to float32, then each entry moved 1 ulp down, kept, or moved 1 ulp up."""
    a32 = np.asarray(a, np.float32)
    u = rng.integers(-1, 2, a32.shape)
    up, down = np.nextafter(a32, np.float32(np.inf)), np.nextafter(a32, np.float32(-np.inf))
    return np.where(u > 0, up, np.where(u < 0, down, a32))


def float32_activations(rng):
    """Oracle ops whose outputs are rounded to float32 with a random ulp (BLAS-heavy ops)."""
    conv, bn, conv_b = R.conv2d, R.batch_norm, R.conv2d_backward

    def conv2d(*a, **k):
        return _ulp_jitter(conv(*a, **k), rng).astype(np.float64)

    def batch_norm(*a, **k):
        y, m, v = bn(*a, **k)
        return _ulp_jitter(y, rng).astype(np.float64), m, v

    def conv2d_backward(*a, **k):
        dx, dw = conv_b(*a, **k)
        return _ulp_jitter(dx, rng).astype(np.float64), _ulp_jitter(dw, rng).astype(np.float64)

    return Patched(conv2d=conv2d, batch_norm=batch_norm, conv2d_backward=conv2d_backward)


def absolute_noise(rng, sigma):
    """Oracle conv and BN outputs plus N(0, sigma^2) noise: float32 errors of a result near 0
    scale with its summands, not with the result, which ulp rounding of the result misses."""
    conv, bn = R.conv2d, R.batch_norm

    def conv2d(*a, **k):
        y = conv(*a, **k)
        return y + rng.normal(0, sigma, y.shape)

    def batch_norm(*a, **k):
        y, m, v = bn(*a, **k)
        return y + rng.normal(0, sigma, y.shape), m, v

    return Patched(conv2d=conv2d, batch_norm=batch_norm)


def relu_margins(w, mom, images, views, lrs, cfg):
    """Smallest nonzero |ReLU input| of the oracle's train forward at each step."""
    w, mom, out = to64(w), to64(mom), []
    for (p1, p2), lr in zip(views, lrs):
        x = np.concatenate([R.augment(images, p1, cfg.augment), R.augment(images, p2, cfg.augment)])
        tape = {}
        h, _ = R.encoder_train_forward(x, w, cfg.model, tape)
        R.head_train_forward(h, w, cfg.model, tape)
        best = (np.inf, "")
        for k, v in tape.items():  # relu inputs: block sums; relu outputs: conv inputs, stem
            a = v[0] if isinstance(v, tuple) else v
            if isinstance(a, np.ndarray) and a.ndim >= 2 and (a != 0).any() and k != "encoder.bn1":
                best = min(best, (float(np.abs(a[a != 0]).min()), k))
        out.append(best)
        _, w, mom = R.train_step(w, mom, images, p1, p2, lr, cfg)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lrs", default=",".join(map(str, MULTI_STEP_LRS)))
    ap.add_argument("--runs", type=int, default=20, help="perturbed oracle runs per kind")
    ap.add_argument("--backends", default="torch,mlx")
    ap.add_argument("--json", default=None)
    ap.add_argument("--abs-noise", default="", help="comma-separated sigmas: --runs oracle runs each "
                    "with N(0, sigma^2) added to every conv and BN output")
    a = ap.parse_args(argv)
    lrs = tuple(float(x) for x in a.lrs.split(","))
    args = _step_args(np.random.default_rng(0), "float32", len(lrs), lrs)
    w, mom, images, views, lrs, cfg = args
    rep: dict = {"lrs": lrs, "steps": len(lrs)}
    t0 = time.time()
    ref = trajectory(oracle_step, *args, keep=True)
    rep["oracle_seconds"] = round(time.time() - t0, 2)
    apis = {}
    for b in [b for b in a.backends.split(",") if b]:
        try:
            apis[b] = get_backend(b)
        except BackendUnavailable:
            print(f"{b}: not installed", file=sys.stderr)
    print(f"lrs {lrs}; oracle trajectory {rep['oracle_seconds']} s")
    for b, api in apis.items():
        step = (lambda *x, api=api: api.train_step(*x, dtype="float32"))
        tr = trajectory(step, *args, keep=True)
        per_step = [worst(tr[s], ref[s]) for s in range(len(lrs))]
        one = []
        for s in range(len(lrs)):
            ws, ms = (w, mom) if s == 0 else (f32(ref[s - 1]["weights"]), f32(ref[s - 1]["momenta"]))
            p1, p2 = views[s]
            lo, wo, mo = oracle_step(ws, ms, images, p1, p2, lrs[s], cfg)
            lb, wb, mb = step(ws, ms, images, p1, p2, lrs[s], cfg)
            one.append(worst({"loss": lb, "weights": wb, "momenta": mb},
                             {"loss": lo, "weights": wo, "momenta": mo}))
        o_from = trajectory(oracle_step, tr[0]["weights"], tr[0]["momenta"], images, views[1:],
                            lrs[1:], cfg)
        amp = worst({"weights": o_from["weights"], "momenta": o_from["momenta"]},
                    {"weights": ref[-1]["weights"], "momenta": ref[-1]["momenta"]})
        rep[b] = {"per_step": per_step, "one_step_from_oracle": one,
                  "oracle_from_step1_state": amp, "versus_oracle": per_step[-1]}
        print(f"\n{b} ({api.version()}):")
        for s in range(len(lrs)):
            print(f"  step {s + 1}: trajectory {per_step[s][1]:.2e} ({per_step[s][0]}); "
                  f"one step from the oracle's state {one[s][1]:.2e} ({one[s][0]})")
        print(f"  the oracle from {b}'s state after step 1 ends {amp[1]:.2e} from the oracle ({amp[0]})")
    if len(apis) == 2:
        (na, ta), (nb, tb) = [(n, trajectory(lambda *x, api=api: api.train_step(*x, dtype="float32"), *args))
                              for n, api in apis.items()]
        rep[f"{na}~{nb}"] = worst(ta, tb)
        print(f"\n{na} vs {nb}: {rep[f'{na}~{nb}'][1]:.2e} ({rep[f'{na}~{nb}'][0]})")
    rng = np.random.default_rng(123)
    spreads = {"start_ulp": [], "float32_ops": []}
    for _ in range(a.runs):
        wp = {k: (_ulp_jitter(v, rng) if v.dtype.kind == "f" else v) for k, v in w.items()}
        spreads["start_ulp"].append(worst(trajectory(oracle_step, wp, mom, images, views, lrs, cfg),
                                          ref[-1])[1])
        with float32_activations(rng):
            spreads["float32_ops"].append(worst(trajectory(oracle_step, *args), ref[-1])[1])
    for sigma in [float(x) for x in a.abs_noise.split(",") if x]:
        spreads[f"abs_noise_{sigma:g}"] = []
        for _ in range(a.runs):
            with absolute_noise(rng, sigma):
                spreads[f"abs_noise_{sigma:g}"].append(worst(trajectory(oracle_step, *args), ref[-1])[1])
    rep["spread"] = {k: {"max": max(v), "median": float(np.median(v)), "runs": len(v)}
                     for k, v in spreads.items() if v}
    print()
    for k, v in rep["spread"].items():
        print(f"oracle spread over {v['runs']} runs, {k}: max {v['max']:.2e}, median {v['median']:.2e}")
    rep["relu_margin"] = relu_margins(*args)
    print("smallest |ReLU input| per step: " + ", ".join(f"{m:.1e} ({k})" for m, k in rep["relu_margin"]))
    neg = {}
    controls = [(f"1% error in d{n}", grad_error(n)) for n in NEG_GRADS]
    controls += [("BN backward with the unbiased variance", bn_backward_unbiased()),
                 ("BN running_var biased", bn_running_var_biased())]
    for label, patch in controls:
        with patch:
            neg[label] = worst(trajectory(oracle_step, *args), ref[-1])
        print(f"negative control {label}: {neg[label][1]:.2e} ({neg[label][0]})")
    rep["negative_controls"] = neg
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rep, f, indent=1, default=float)
    return 0


if __name__ == "__main__":
    sys.exit(main())
