"""Export the pre-trained encoder f (without the projection head g) for use outside simclr-xb.

Formats (:data:`FORMATS`), all with torchvision's parameter names, i.e. the canonical names
of :mod:`simclr_xb.resnet_spec` with the ``encoder.`` prefix removed (``conv1.weight``,
``bn1.running_var``, ``layer2.0.downsample.0.weight``, ...), PyTorch layouts (conv OIHW),
float32 (``num_batches_tracked`` int64):

* ``torchvision``: ``torch.save({name: tensor})`` (needs torch). For an ImageNet-stem model of
  width 1 it loads into ``torchvision.models.resnetNN()`` with
  ``model.load_state_dict(sd, strict=False)``: every encoder key matches, only ``fc.weight`` /
  ``fc.bias`` are missing (the classifier is not part of the encoder), and with
  ``model.fc = torch.nn.Identity()`` the model computes the same h as simclr-xb's encoder.
  A CIFAR-stem model has the same key names but ``conv1.weight`` is (C, 3, 3, 3), not
  (C, 3, 7, 7), and no max-pool: build the torchvision model, then set
  ``model.conv1 = nn.Conv2d(3, C, 3, 1, 1, bias=False)`` and ``model.maxpool = nn.Identity()``
  before loading (:func:`torchvision_notes` says so for the model at hand). A width multiplier
  other than 1 changes every channel count (SimCLR's 2x/4x scale all layers; torchvision's
  ``wide_resnet`` scales only the bottleneck's inner width), so such weights need a model
  built with those channel counts. The metadata goes beside the file as ``<file>.json``.
* ``safetensors``: written here with numpy (no dependency): an 8-byte little-endian header
  length, a JSON header ``{name: {"dtype", "shape", "data_offsets": [begin, end]}}`` with
  ``__metadata__`` (string -> string), padded with spaces to a multiple of 8 bytes, then the
  raw little-endian C-order bytes of each tensor in header order.
* ``npz``: ``numpy.savez`` of the same arrays plus ``__metadata__`` (a 0-d JSON string).

:func:`load_exported` reads any of the three back as canonical weights (``encoder.`` names)
that both backends load; :func:`placeholder_head` completes them into a state a pre-training
``Trainer`` accepts (the head does not change h). Writes are atomic (temp file + rename).
"""
from __future__ import annotations

import json
import struct
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .config import Config, ModelConfig
from .resnet_spec import encoder_layout, encoder_specs, head_specs, init_weights

FORMATS = ("torchvision", "safetensors", "npz")
ENCODER_PREFIX = "encoder."
METADATA_KEY = "__metadata__"
SUFFIXES = {"torchvision": ".pt", "safetensors": ".safetensors", "npz": ".npz"}

# safetensors dtype names <-> numpy (little-endian); bfloat16 has no numpy dtype.
_ST_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "I16": "<i2",
              "I8": "i1", "U8": "u1", "U16": "<u2", "U32": "<u4", "U64": "<u8", "BOOL": "?"}


class ExportError(ValueError):
    """An exported file cannot be written or read; the message names the file."""


@dataclass
class ExportResult:
    path: Path
    format: str
    tensors: int
    notes: list[str] = field(default_factory=list)
    sidecar: Path | None = None


# --------------------------------------------------------------------------- names


def encoder_state(weights: dict[str, np.ndarray], model_cfg: ModelConfig) -> dict[str, np.ndarray]:
    """torchvision-named encoder arrays (``encoder.`` stripped), in canonical order: floats as
    float32 C-contiguous, ``num_batches_tracked`` int64. ValueError names a missing entry."""
    out = {}
    for s in encoder_specs(model_cfg):
        if s.name not in weights:
            raise ValueError(f"weights lack {s.name} (expected every entry of the {model_cfg.arch} encoder)")
        a = np.asarray(weights[s.name])
        if tuple(a.shape) != s.shape:
            raise ValueError(f"{s.name} has shape {a.shape}, model expects {s.shape}")
        dt = np.int64 if s.kind == "bn.num_batches_tracked" else np.float32
        out[s.name[len(ENCODER_PREFIX):]] = np.array(a, dtype=dt, order="C")  # keeps 0-d as 0-d
    return out


def to_canonical(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """torchvision names -> canonical names: ``encoder.*``, except a fine-tuned model's
    classifier ``fc.weight`` / ``fc.bias``, which keep their names."""
    return {(k if k.startswith("fc.") else ENCODER_PREFIX + k): v for k, v in state.items()}


def torchvision_notes(model_cfg: ModelConfig) -> list[str]:
    """What a torchvision user must change to load this encoder (empty for a plain ResNet)."""
    lay = encoder_layout(model_cfg)
    notes = []
    if model_cfg.cifar_stem:
        notes.append(
            f"CIFAR stem: conv1.weight is {(lay.stem_ch, 3, 3, 3)} (3x3, stride 1, padding 1; "
            f"torchvision has 7x7 stride 2) and there is NO max-pool. Before load_state_dict set "
            f"model.conv1 = torch.nn.Conv2d(3, {lay.stem_ch}, 3, 1, 1, bias=False) and "
            f"model.maxpool = torch.nn.Identity().")
    if model_cfg.width != 1:
        notes.append(
            f"width multiplier {model_cfg.width:g}: every channel count is scaled (stem "
            f"{lay.stem_ch} channels, h has {lay.feature_dim}); torchvision's {model_cfg.arch}() has "
            f"width 1, so the key names match but the shapes do not: build the network with these "
            f"channel counts.")
    return notes


def metadata(cfg: Config, checkpoint: str | None = None, step: int | None = None) -> dict[str, str]:
    """String -> string metadata stored with an export (safetensors ``__metadata__`` rules)."""
    from . import __version__
    m = cfg.model
    return {"format": "simclr-xb-encoder", "simclr_xb": __version__, "arch": m.arch,
            "width": f"{m.width:g}", "cifar_stem": str(bool(m.cifar_stem)).lower(),
            "feature_dim": str(encoder_layout(m).feature_dim),
            "image_size": str(cfg.augment.image_size), "names": "torchvision (encoder. prefix removed)",
            "input": "RGB floats in [0, 1], NCHW, no mean/std normalisation",
            "checkpoint": str(checkpoint or ""), "step": str(step if step is not None else ""),
            "config": cfg.to_json(), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


# --------------------------------------------------------------------------- atomic write


def _atomic_write(path: Path, write) -> Path:
    """:func:`simclr_xb.checkpoint.atomic_write` raising :class:`ExportError`."""
    from .checkpoint import atomic_write
    return atomic_write(path, write, error=ExportError)


# --------------------------------------------------------------------------- safetensors


def write_safetensors(path: str | Path, tensors: dict[str, np.ndarray],
                      meta: dict[str, str] | None = None) -> Path:
    """Write ``tensors`` (numpy, any supported dtype) as a safetensors file, atomically."""
    header: dict = {}
    if meta:
        bad = [k for k, v in meta.items() if not (isinstance(k, str) and isinstance(v, str))]
        if bad:
            raise ValueError(f"safetensors metadata must map strings to strings; bad keys: {bad[:5]}")
        header[METADATA_KEY] = dict(meta)
    arrays, offset = [], 0
    for name, a in tensors.items():
        if name == METADATA_KEY:
            raise ValueError(f"a tensor may not be named {METADATA_KEY}")
        a = np.asarray(a)
        key = next((k for k, v in _ST_DTYPES.items() if np.dtype(v) == a.dtype.newbyteorder("<")), None)
        if key is None:
            raise ValueError(f"tensor {name} has dtype {a.dtype}, which safetensors cannot store")
        b = np.asarray(a, dtype=np.dtype(_ST_DTYPES[key])).tobytes(order="C")
        header[name] = {"dtype": key, "shape": list(a.shape), "data_offsets": [offset, offset + len(b)]}
        arrays.append(b)
        offset += len(b)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * ((8 - len(text) % 8) % 8)  # the data starts 8-byte aligned

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(text)))
            f.write(text)
            for b in arrays:
                f.write(b)
    return _atomic_write(Path(path), write)


def read_safetensors(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """(tensors, metadata) of a safetensors file; ExportError names the file and the fault."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ExportError(f"cannot read {path}: {e.strerror}") from None
    if len(data) < 8:
        raise ExportError(f"{path} is not a safetensors file (shorter than its 8-byte header length)")
    (n,) = struct.unpack("<Q", data[:8])
    if n > len(data) - 8:
        raise ExportError(f"{path} is not a safetensors file (header length {n} exceeds the file)")
    try:
        header = json.loads(data[8:8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ExportError(f"{path} has an unreadable safetensors header: {e}") from None
    if not isinstance(header, dict):
        raise ExportError(f"{path} has a safetensors header that is not a JSON object")
    meta = header.pop(METADATA_KEY, {}) or {}
    body = memoryview(data)[8 + n:]
    tensors, spans = {}, []
    for name, info in header.items():
        try:
            dt = np.dtype(_ST_DTYPES[info["dtype"]])
            shape = tuple(int(d) for d in info["shape"])
            begin, end = (int(v) for v in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise ExportError(f"{path}: tensor {name} has an invalid header entry {info!r}") from None
        if not 0 <= begin <= end <= len(body) or end - begin != dt.itemsize * int(np.prod(shape)):
            raise ExportError(f"{path}: tensor {name} ({info['dtype']} {shape}) has data_offsets "
                              f"[{begin}, {end}] that do not fit its size or the file")
        tensors[name] = np.frombuffer(body[begin:end], dtype=dt).reshape(shape).astype(dt.newbyteorder("="))
        spans.append((begin, end))
    spans.sort()
    pos = 0
    for begin, end in spans:  # the format requires the tensors to tile the data exactly
        if begin != pos:
            raise ExportError(f"{path}: the tensors' data does not tile the file (gap or overlap at "
                              f"byte {pos})")
        pos = end
    if pos != len(body):
        raise ExportError(f"{path}: {len(body) - pos} bytes after the last tensor")
    return tensors, dict(meta)


# --------------------------------------------------------------------------- export / load


def export_encoder(weights: dict[str, np.ndarray], cfg: Config, fmt: str, out: str | Path,
                   checkpoint: str | None = None, step: int | None = None) -> ExportResult:
    """Write the encoder of canonical ``weights`` to ``out`` in format ``fmt`` (:data:`FORMATS`)."""
    if fmt not in FORMATS:
        raise ValueError(f"export format {fmt!r} is unknown: expected one of {FORMATS}")
    out = Path(out)
    state = encoder_state(weights, cfg.model)
    notes = torchvision_notes(cfg.model)
    meta = dict(metadata(cfg, checkpoint, step), torchvision_notes=" | ".join(notes))
    sidecar = None
    if fmt == "safetensors":
        write_safetensors(out, state, meta)
    elif fmt == "npz":
        write_npz(out, state, meta)
    else:
        try:
            import torch
        except ImportError:
            from .backend import BackendUnavailable
            raise BackendUnavailable("the torchvision export format needs torch: pip install "
                                     "'simclr-xb[torch]' (or export --format safetensors / npz)") from None
        tensors = {k: torch.from_numpy(np.array(v)) for k, v in state.items()}

        def save(tmp: Path) -> None:
            try:
                torch.save(tensors, tmp)
            except RuntimeError as e:  # torch reports a failed write (e.g. disk full) this way
                raise OSError(f"torch.save failed: {e}") from e
        _atomic_write(out, save)
        side = dict(meta, torchvision_notes=" | ".join(notes) or
                    f"loads into torchvision.models.{cfg.model.arch}(); strict=False misses only "
                    f"fc.weight and fc.bias")
        sidecar = _atomic_write(out.with_name(out.name + ".json"),
                                lambda tmp: tmp.write_text(json.dumps(side, indent=1)))
    return ExportResult(path=out, format=fmt, tensors=len(state), notes=notes, sidecar=sidecar)


def write_npz(path: str | Path, arrays: dict[str, np.ndarray], meta: dict[str, str] | None = None) -> Path:
    """``numpy.savez`` of ``arrays`` + ``__metadata__`` (0-d JSON string), atomically."""
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: savez would append ".npz" to the temp name
            np.savez(f, **arrays, **{METADATA_KEY: np.array(json.dumps(meta or {}))})
    return _atomic_write(Path(path), write)


def detect_format(path: str | Path) -> str:
    """"npz" | "safetensors" | "torchvision" from the file's content (suffix as a tiebreak)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as e:
        raise ExportError(f"cannot read {path}: {e.strerror}") from None
    if head[:4] == b"PK\x03\x04":  # a zip: numpy's npz or torch.save's archive
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
        if any(n.endswith("data.pkl") for n in names):
            return "torchvision"
        if names and all(n.endswith(".npy") for n in names):
            return "npz"
        raise ExportError(f"{path} is a zip archive but neither an npz nor a torch.save file")
    if len(head) == 8:
        return "safetensors"
    raise ExportError(f"{path} is not an exported encoder (npz, safetensors or torch.save)")


def load_exported(path: str | Path) -> dict[str, np.ndarray]:
    """Canonical weights (``encoder.*``; float32, num_batches_tracked int64) of an exported
    encoder in any of :data:`FORMATS` (torchvision needs torch)."""
    path = Path(path)
    fmt = detect_format(path)
    if fmt == "safetensors":
        state, _ = read_safetensors(path)
    elif fmt == "npz":
        with np.load(path, allow_pickle=False) as z:
            state = {k: np.array(z[k]) for k in z.files if k != METADATA_KEY}
    else:
        try:
            import torch
        except ImportError:
            raise ExportError(f"{path} is a torch.save file: reading it needs torch") from None
        sd = torch.load(path, map_location="cpu", weights_only=True)
        state = {k: v.detach().cpu().numpy().copy() for k, v in sd.items()}
    return to_canonical(state)


def export_metadata(path: str | Path) -> dict[str, str]:
    """The metadata stored with an export (safetensors header, npz entry, or the .json sidecar)."""
    path = Path(path)
    fmt = detect_format(path)
    if fmt == "safetensors":
        return read_safetensors(path)[1]
    if fmt == "npz":
        with np.load(path, allow_pickle=False) as z:
            return json.loads(str(z[METADATA_KEY])) if METADATA_KEY in z.files else {}
    side = path.with_name(path.name + ".json")
    return json.loads(side.read_text()) if side.exists() else {}


def placeholder_head(encoder_weights: dict[str, np.ndarray], model_cfg: ModelConfig) -> dict[str, np.ndarray]:
    """``encoder_weights`` + a freshly initialised head (seed 0): a full state for a
    pre-training ``Trainer.load_state_dict`` whose ``encode`` then gives the exported h (the
    head never touches h; exports do not carry it)."""
    init = init_weights(model_cfg, 0)
    out = {s.name: init[s.name] for s in head_specs(model_cfg)}
    out.update(encoder_weights)
    return out
