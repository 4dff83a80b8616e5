"""The progress line off a terminal (simclr_xb/progress.py): driven by a fake clock, never by
real time. At most one line per interval within an epoch, one at every epoch end and one at the
last step; a terminal gets the redrawn bar at every step; metrics.jsonl keeps every step."""
from __future__ import annotations

import io
import json
import re

import pytest

from simclr_xb.config import ConfigError, preset
from simclr_xb.progress import Progress


class FakeClock:
    def __init__(self, step_s: float):
        self.t, self.step_s = 1000.0, step_s

    def __call__(self) -> float:
        return self.t

    def advance(self):
        self.t += self.step_s


def lines_of(stream) -> list[int]:
    return [int(m.group(1)) for m in re.finditer(r"^(\d+)/\d+ \[", stream.getvalue(), re.M)]


def test_non_tty_writes_at_most_one_line_per_interval_plus_epoch_ends():
    clock, out = FakeClock(1.0), io.StringIO()  # StringIO: not a terminal
    p = Progress(250, stream=out, interval_s=30, steps_per_epoch=100, clock=clock)
    times = {}
    for step in range(1, 251):
        clock.advance()
        times[step] = clock()
        p.update(step, loss=1.0)
    steps = lines_of(out)
    assert steps == [30, 60, 90, 100, 130, 160, 190, 200, 230, 250]
    for a, b in zip(steps, steps[1:]):  # within an epoch: >= 30 s between lines
        if b % 100 and b != 250:
            assert times[b] - times[a] >= 30


def test_fast_steps_do_not_flood_the_log():
    clock, out = FakeClock(1 / 16), io.StringIO()  # 16 steps/s (exact in binary)
    p = Progress(5000, stream=out, interval_s=30, steps_per_epoch=5000, clock=clock)
    for step in range(1, 5001):
        clock.advance()
        p.update(step)
    # 312.5 s of steps: a line every 480 steps (30 s) and the last, 11 lines for 5000 steps
    assert lines_of(out) == [480 * k for k in range(1, 11)] + [5000]


def test_terminal_redraws_every_step():
    class Tty(io.StringIO):
        def isatty(self):
            return True
    clock, out = FakeClock(1.0), Tty()
    p = Progress(10, stream=out, interval_s=30, clock=clock)
    for step in range(1, 11):
        clock.advance()
        p.update(step)
    assert out.getvalue().count("\r") == 10


def test_non_tty_training_run_with_a_fake_clock(tmp_path, monkeypatch, capsys, one_torch_thread):
    """train(): 16 steps, 10 fake seconds each, interval 25 s, 8 steps per epoch: lines at steps
    3, 6 (interval), 8 (epoch end), 11, 14 (interval), 16 (end), not every log_every = 5 steps;
    metrics.jsonl still has every step."""
    pytest.importorskip("torch")
    import simclr_xb.progress as progress
    from simclr_xb.train import train
    clock = FakeClock(10.0)
    calls = {"n": 0}

    def fake_now():  # one reading at start, then one per update
        calls["n"] += 1
        if calls["n"] > 1:
            clock.advance()
        return clock()

    monkeypatch.setattr(progress, "_now", fake_now)
    cfg = preset("tiny").with_overrides([
        "model.width=0.125", "augment.image_size=16", "train.batch_size=32", "train.epochs=2",
        "data.num_workers=0", "data.name=shapes:train=256,test=32", "train.monitor_every=0",
        "train.progress_every_s=25", "train.checkpoint_every=100"])
    train(cfg, tmp_path / "r", show_progress=True, log=lambda m: None)
    err = capsys.readouterr().err
    assert lines_of(io.StringIO(err)) == [3, 6, 8, 11, 14, 16], err
    recs = [json.loads(l) for l in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == list(range(1, 17))


def test_interval_is_validated():
    with pytest.raises(ConfigError, match="train.progress_every_s"):
        preset("tiny").with_overrides(["train.progress_every_s=0"])
