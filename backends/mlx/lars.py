"""LARS (You et al. 2017) as in SimCLR's official code: classic momentum, as an MLX optimizer.

For each parameter w with gradient g (:func:`simclr_xb.reference.lars_step`):

    g     <- g + wd w                                   (unless excluded)
    trust  = eta |w| / |g| if |w| > 0 and |g| > 0       (unless excluded) else 1
    v     <- m v + lr trust g
    w     <- w - v              (Nesterov: w <- w - (m v + lr trust g))

Excluded parameters (BN weights and biases, linear biases, the online probe) get no weight
decay and trust 1. Exclusion is decided by :attr:`simclr_xb.resnet_spec.ParamSpec.lars_excluded`
(module kind, never a name regex) and handed in as a tree of Python bools with the structure of
the parameters; the trust ratio uses ``mx.where`` so the update is branch-free and compiles.
The learning rate lives in the optimizer state as an array (``opt.learning_rate = lr`` every
step), so ``mx.compile(..., inputs=state, outputs=state)`` does not retrace when it changes.
"""
from __future__ import annotations

import mlx.core as mx
import mlx.optimizers as optim
from mlx.utils import tree_flatten, tree_map

from simclr_xb.config import OptimConfig


class LARS(optim.Optimizer):
    """LARS with classic momentum (optionally Nesterov) and per-parameter exclusion flags.

    Args:
        learning_rate: initial learning rate (set it every step with ``opt.learning_rate = lr``).
        momentum, weight_decay, eta, nesterov: as :class:`simclr_xb.config.OptimConfig`.
        excluded: tree of bools with the parameters' structure (True = no decay, trust 1);
            None excludes nothing.
        dtype: dtype of the learning-rate array (float64 for the float64 precision).
    State per parameter: ``{"v": momentum buffer}`` (zeros at init).
    """

    def __init__(self, learning_rate: float = 0.0, momentum: float = 0.9,
                 weight_decay: float = 1e-6, eta: float = 1e-3, nesterov: bool = False,
                 excluded=None, dtype=mx.float32):
        super().__init__()
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.eta = eta
        self.nesterov = nesterov
        self.excluded = excluded
        self.lr_dtype = dtype
        self.learning_rate = learning_rate

    @classmethod
    def from_config(cls, cfg: OptimConfig, excluded=None, dtype=mx.float32) -> LARS:
        return cls(0.0, cfg.momentum, cfg.weight_decay, cfg.eta, cfg.nesterov, excluded, dtype)

    @property
    def learning_rate(self) -> mx.array:
        return self.state["learning_rate"]

    @learning_rate.setter
    def learning_rate(self, lr) -> None:
        self.state["learning_rate"] = mx.array(lr, dtype=self.lr_dtype)

    def init_single(self, parameter: mx.array, state: dict) -> None:
        state["v"] = mx.zeros_like(parameter)

    def apply_gradients(self, gradients: dict, parameters: dict):
        """The updated parameters for the tree ``gradients`` (``parameters`` may be a superset)."""
        if not self._initialized:
            self.init(gradients)
        self.state["step"] = self.step + 1
        excluded = self.excluded if self.excluded is not None else tree_map(lambda _: False,
                                                                            gradients)
        return tree_map(self._update, gradients, parameters, self.state, excluded)

    def _update(self, g: mx.array, w: mx.array, state: dict, excluded: bool) -> mx.array:
        lr = self.learning_rate.astype(g.dtype)
        if excluded:
            trust = 1.0
        else:
            g = g + self.weight_decay * w
            wn = mx.sqrt(mx.sum(mx.square(w)))
            gn = mx.sqrt(mx.sum(mx.square(g)))
            ok = (wn > 0) & (gn > 0)
            trust = mx.where(ok, self.eta * wn / mx.where(ok, gn, 1.0), 1.0)
        scaled = lr * trust * g
        v = self.momentum * state["v"] + scaled
        state["v"] = v
        update = self.momentum * v + scaled if self.nesterov else v
        return w - update

    def apply_single(self, gradient, parameter, state):  # pragma: no cover - not used
        raise NotImplementedError("LARS needs the exclusion flag: use apply_gradients")

    # ---- momentum buffers by parameter path (for state dicts) --------------------------
    def momenta(self) -> dict[str, mx.array]:
        """{parameter path: momentum buffer} (paths as ``tree_flatten`` of the parameters)."""
        out = {}
        for path, v in tree_flatten(self.state):
            if path.endswith(".v"):
                out[path[:-2]] = v
        return out

    def set_momenta(self, momenta: dict[str, mx.array]) -> None:
        """Overwrite momentum buffers in place (the state tree object stays the same, so a
        compiled step holding it keeps working). Every path must already exist; a path is a
        key of a flat parameter dict or a dotted path into a nested one."""
        for path, v in momenta.items():
            node = self.state.get(path) if isinstance(self.state, dict) else None
            if node is None:
                node = self.state
                for key in path.split("."):
                    node = node[int(key)] if isinstance(node, list) else node[key]
            if node["v"].shape != v.shape:
                raise ValueError(f"momentum for {path} has shape {tuple(v.shape)}, "
                                 f"optimizer expects {tuple(node['v'].shape)}")
            node["v"] = v
