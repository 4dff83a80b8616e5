"""`simclr-xb train --precision auto` (the default) picks bf16 as `demo` does, and never
overrides a precision the user set."""
import simclr_xb.cli as cli
from simclr_xb.config import preset


def test_auto_picks_bf16_where_fast(monkeypatch, tmp_path):
    cfg = preset("tiny")
    monkeypatch.setattr(cli, "_fast_bf16", lambda device: True)
    assert cli._auto_precision(cfg, "torch", None, (), None).train.precision == "bfloat16"
    assert cli._auto_precision(cfg, "mlx", None, (), None).train.precision == "float32"
    kept = cli._auto_precision(cfg, "torch", None, ("train.precision=float32",), None)
    assert kept.train.precision == "float32"
    f = tmp_path / "c.toml"
    f.write_text('[train]\nprecision = "float32"\n')
    assert cli._auto_precision(cfg, "torch", None, (), str(f)).train.precision == "float32"
    monkeypatch.setattr(cli, "_fast_bf16", lambda device: False)
    assert cli._auto_precision(cfg, "torch", None, (), None).train.precision == "float32"
