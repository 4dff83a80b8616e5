"""simclr_xb.outputs (output checks, run identity) and simclr_xb.inputs (budgets, devices)."""
from __future__ import annotations

import gzip
import os

import pytest

from simclr_xb.inputs import InputTooLarge, check_allocation, check_device, positive_int, read_capped
from simclr_xb.outputs import OutputError, check_output_dir, check_output_file, claim_run_folder, not_regular, read_run


def test_output_file_checks(tmp_path):
    (tmp_path / "in.h5").write_bytes(b"x")
    os.link(tmp_path / "in.h5", tmp_path / "link.h5")
    os.mkfifo(tmp_path / "p")
    assert check_output_file(tmp_path / "new.json") == tmp_path / "new.json"
    assert check_output_file(tmp_path / "deep" / "er" / "new.json")  # created later, writable ancestor
    with pytest.raises(OutputError, match=r"--json .*/p is a FIFO \(named pipe\)"):
        check_output_file(tmp_path / "p", "--json")
    with pytest.raises(OutputError, match="is a folder"):
        check_output_file(tmp_path, "--out")
    for same in ("in.h5", "link.h5"):  # the path itself, and another name of the same file
        with pytest.raises(OutputError, match="one of this command's inputs"):
            check_output_file(tmp_path / same, inputs=(tmp_path / "in.h5",))
    with pytest.raises(OutputError, match="which is a regular file, not a folder"):
        check_output_file(tmp_path / "in.h5" / "x.json")
    with pytest.raises(OutputError, match="does not exist"):
        check_output_file(tmp_path / "nope" / "r.json", "--json", parent_must_exist=True)
    assert not_regular(tmp_path / "in.h5") is None and not_regular(tmp_path / "absent") is None
    assert not_regular("/dev/null") == "a character device"


def test_output_dir_checks(tmp_path):
    (tmp_path / "f").write_text("x")
    os.mkfifo(tmp_path / "p")
    assert check_output_dir(tmp_path / "new" / "run")
    with pytest.raises(OutputError, match="FIFO"):
        check_output_dir(tmp_path / "p")
    with pytest.raises(OutputError, match=r"is not writable \(Not a directory"):
        check_output_dir(tmp_path / "f" / "sub")


def _ckpt(folder):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "last.h5").write_bytes(b"ckpt")
    return folder / "last.h5"


def test_run_identity(tmp_path):
    a = tmp_path / "a"
    rid = claim_run_folder(a)
    assert read_run(a)["run_id"] == rid and read_run(a)["resumed_from"] is None
    # a folder whose run wrote no checkpoint yet can be taken by a new run
    rid2 = claim_run_folder(a)
    assert rid2 != rid
    _ckpt(a)
    with pytest.raises(OutputError, match=r"already holds a run .*--resume"):
        claim_run_folder(a)
    assert claim_run_folder(a, resume_from=a / "last.h5") == rid2  # continue in place
    # continue in a new folder: the same run id, where it came from recorded
    c = tmp_path / "c"
    assert claim_run_folder(c, resume_from=a / "last.h5") == rid2
    assert read_run(c)["resumed_from"] == str(a / "last.h5")
    _ckpt(c)
    assert claim_run_folder(c, resume_from=a) == rid2  # a folder of the same run
    # another run's folder, with or without run.json: refused, nothing written
    b = tmp_path / "b"
    claim_run_folder(b)
    _ckpt(b)
    before = (b / "run.json").read_text()
    with pytest.raises(OutputError, match="holds another run"):
        claim_run_folder(b, resume_from=a)
    legacy = tmp_path / "legacy"
    _ckpt(legacy)
    with pytest.raises(OutputError, match="holds another run"):
        claim_run_folder(legacy, resume_from=a)
    assert (b / "run.json").read_text() == before and not (legacy / "run.json").exists()
    # a legacy run resumed in place gets an identity
    assert claim_run_folder(legacy, resume_from=legacy) == read_run(legacy)["run_id"]
    (b / "run.json").write_text("{not json")
    with pytest.raises(OutputError, match="run file .* is unreadable"):
        claim_run_folder(b, resume_from=b)


def test_allocation_budget(monkeypatch):
    monkeypatch.setenv("SIMCLR_XB_MAX_BYTES", str(1000))
    check_allocation(1000, "x")
    with pytest.raises(InputTooLarge, match="the thing would need"):
        check_allocation(1001, "the thing")
    monkeypatch.setenv("SIMCLR_XB_MAX_BYTES", "lots")
    with pytest.raises(InputTooLarge, match="SIMCLR_XB_MAX_BYTES"):
        check_allocation(1, "x")


def test_read_capped(tmp_path):
    p = tmp_path / "b.gz"
    p.write_bytes(gzip.compress(bytes(10_000)))
    assert read_capped(p, 10_000, "file") == bytes(10_000)
    with pytest.raises(InputTooLarge, match="once decompressed"):
        read_capped(p, 9_999, "file", block=1000)


def test_counts_and_devices():
    assert positive_int(3, "--n") == 3 and positive_int(None, "--n") is None
    for bad in (0, -1, True, 1.5):
        with pytest.raises(ValueError, match="--n"):
            positive_int(bad, "--n")
    pytest.importorskip("torch")
    check_device("torch", "cpu")
    check_device("torch", None)
    with pytest.raises(ValueError, match="--device 'cuda:x' is invalid"):
        check_device("torch", "cuda:x")
    import torch
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="--device cuda is not available"):
            check_device("torch", "cuda")
