"""charlstm.storage.checkpoint: files from elsewhere load safely or fail with one clear line.

A checkpoint is opened with ``weights_only=True``: a file whose unpickling would run code
(here: create a marker file) is refused by every command that takes a checkpoint, and the
marker never appears. Damaged or foreign files are one line each; an older format version
is upgraded; writes are atomic and never replace a good file with a bad one.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch

from charlstm.errors import CharLSTMError
from charlstm.storage import checkpoint as ckpt
from charlstm.storage import runs
from tests.helpers import FAST, invoke, one_line_error


def raw(run: Path) -> dict[str, Any]:
    return torch.load(run / "last.pt", weights_only=True)


def test_save_then_load_gives_back_every_field(tiny_run, tmp_path):
    original = ckpt.load(tiny_run / "last.pt")
    copy = ckpt.load(ckpt.save(original, tmp_path / "copy.pt"))
    assert copy.model_config == original.model_config
    assert copy.train_config == original.train_config
    assert copy.data_config == original.data_config
    assert copy.vocab == original.vocab
    assert (copy.epoch, copy.batch, copy.step) == (original.epoch, original.batch, original.step)
    assert copy.best_val_loss == original.best_val_loss
    assert all(torch.equal(copy.model[k], v) for k, v in original.model.items())
    assert torch.equal(copy.rng["torch"], original.rng["torch"])
    assert not list(tmp_path.glob("*.tmp"))


def test_loading_leaves_the_global_random_state_alone(tiny_run):
    before = torch.get_rng_state()
    ckpt.load(tiny_run / "last.pt")
    assert torch.equal(torch.get_rng_state(), before)


# -- damaged and foreign files -------------------------------------------------------------


def _truncate(run, path):
    data = (run / "last.pt").read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _clip_end(run, path):
    path.write_bytes((run / "last.pt").read_bytes()[:-40])


def _save(content):
    return lambda run, path: torch.save(content(raw(run)), path)


def _without(key):
    return _save(lambda d: {k: v for k, v in d.items() if k != key})


def _garbled_pickle(run, path):
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", b"\x80\x02garbage")


def _other_architecture(d):
    return {**d, "model_config": {**d["model_config"], "hidden_size": 24}}


BROKEN = [
    ("truncated", _truncate, "not a readable charlstm checkpoint"),
    ("last-bytes-cut", _clip_end, "not a readable charlstm checkpoint"),
    ("random-bytes", lambda run, p: p.write_bytes(bytes(range(256)) * 20), "not a PyTorch"),
    ("empty", lambda run, p: p.write_bytes(b""), "is empty"),
    ("text", lambda run, p: p.write_text("hello\n"), "not a PyTorch checkpoint file"),
    ("plain-pickle", lambda run, p: p.write_bytes(pickle.dumps(raw(run))), "not a PyTorch"),
    ("zip-of-text", lambda run, p: zipfile.ZipFile(p, "w").close(), "zip archive without"),
    ("garbled-data", _garbled_pickle, "not a readable charlstm checkpoint"),
    ("a-tensor", lambda run, p: torch.save(torch.zeros(3), p), "holds a Tensor"),
    ("foreign-dict", lambda run, p: torch.save({"weights": torch.zeros(3)}, p), "without"),
    ("missing-model-config", _without("model_config"), "is missing model_config"),
    ("missing-model", _without("model"), "is missing model"),
    ("missing-vocabulary", _without("idx_to_char"), "is missing idx_to_char"),
    ("newer-version", _save(lambda d: {**d, "format_version": 99}), "newer than this charlstm"),
    ("bad-version", _save(lambda d: {**d, "format_version": "1"}), "invalid format version"),
    ("weights-misfit", _save(_other_architecture), "does not match its model configuration"),
    ("averaged-misfit", _save(lambda d: {**d, "training_model": {"w": torch.zeros(2)}}),
     "does not match its model configuration"),
    ("vocab-misfit", _save(lambda d: {**d, "idx_to_char": d["idx_to_char"][:-1]}), "characters"),
    ("bad-config", _save(lambda d: {**d, "model_config": "big"}), "is malformed"),
    ("bad-backend", _save(lambda d: {**d, "model_config": {**d["model_config"], "backend": "x"}}),
     "unknown backend"),
]  # fmt: skip


@pytest.mark.parametrize(("make", "message"), [b[1:] for b in BROKEN], ids=[b[0] for b in BROKEN])
def test_a_broken_checkpoint_is_one_clear_line_everywhere(
    tiny_run, small_corpus, tmp_path, make, message
):
    path = tmp_path / "broken.pt"
    make(tiny_run, path)
    with pytest.raises(CharLSTMError) as info:
        ckpt.load(path)
    assert message in str(info.value) and "\n" not in str(info.value)
    assert str(path) in str(info.value)  # names the file
    for command in (
        ["generate", "--checkpoint", path, "--prefix", "分"],
        ["eval", small_corpus, "--checkpoint", path],
        ["train", "--resume", path, "--epochs", "3"],
        ["train", small_corpus, "--init-from", path, "--run-dir", tmp_path / "ft", *FAST],
        ["convert", path, "--to", "torch", "--out", tmp_path / "out.pt"],
    ):
        one_line_error(invoke(*command), message)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.pt"]  # nothing written


# -- code in a pickle ----------------------------------------------------------------------


class OpenFile:
    """Unpickling calls ``open(marker, "w")``: the file appears."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


class ExecCode:
    """Unpickling runs Python source through ``exec``."""

    def __init__(self, marker: Path) -> None:
        self.source = f"open({str(marker)!r}, 'w').close()"

    def __reduce__(self):
        return (exec, (self.source,))


def _evil_torch(marker, path, run):
    torch.save({"format_version": 1, "model": OpenFile(marker)}, path)


def _evil_inside_a_real_checkpoint(marker, path, run):
    data = raw(run)
    data["train_config"] = {**data["train_config"], "prefixes": [ExecCode(marker)]}
    torch.save(data, path)


def _evil_plain_pickle(marker, path, run):
    path.write_bytes(pickle.dumps({"format_version": 1, "model": OpenFile(marker)}))


PAYLOADS = [
    ("torch-save-open", _evil_torch, "refusing to load", "io.open"),
    ("hidden-in-a-checkpoint-exec", _evil_inside_a_real_checkpoint, "refusing to load", "exec"),
    ("plain-pickle-open", _evil_plain_pickle, "not a PyTorch checkpoint file", ""),
]


@pytest.mark.parametrize(
    ("make", "message", "named"), [p[1:] for p in PAYLOADS], ids=[p[0] for p in PAYLOADS]
)
def test_a_checkpoint_that_would_run_code_is_refused_by_every_command(
    tiny_run, small_corpus, tmp_path, make, message, named
):
    marker = tmp_path / "MARKER"
    path = tmp_path / "evil.pt"
    make(marker, path, tiny_run)
    # the payload is live: unpickling it without weights_only creates the marker
    if zipfile.is_zipfile(path):
        torch.load(path, weights_only=False)
    else:
        pickle.loads(path.read_bytes())
    assert marker.exists()
    marker.unlink()

    commands = {
        "generate": ["generate", "--checkpoint", path, "--prefix", "分"],
        "eval": ["eval", small_corpus, "--checkpoint", path],
        "resume": ["train", "--resume", path, "--epochs", "3"],
        "init-from": ["train", small_corpus, "--init-from", path, "--run-dir", tmp_path / "ft"],
        "convert": ["convert", path, "--to", "torch", "--out", tmp_path / "out.pt"],
    }
    for args in commands.values():
        line = one_line_error(invoke(*args), message)
        assert named in line
        assert not marker.exists()
    with pytest.raises(CharLSTMError, match=message):
        ckpt.load(path)
    assert not marker.exists()


# -- format versions -----------------------------------------------------------------------


def test_a_version_0_checkpoint_is_upgraded_and_resumes(tiny_run, small_corpus, tmp_path):
    """Version 0: no format_version, char_to_idx, batch or progress (epoch ends only)."""
    data = raw(tiny_run)
    for key in ("format_version", "char_to_idx", "batch", "progress"):
        del data[key]
    old = tmp_path / "old" / "model.pt"
    old.parent.mkdir()
    torch.save(data, old)

    loaded = ckpt.load(old)
    assert (loaded.epoch, loaded.batch, loaded.progress) == (1, 0, {})
    assert loaded.vocab == ckpt.load(tiny_run / "last.pt").vocab
    generated = invoke("generate", "--checkpoint", old, "--prefix", "分", "--length", "5")
    assert generated.exit_code == 0, generated.output
    resumed = invoke("train", "--resume", old, "--epochs", "2", "--run-dir", tmp_path / "next")
    assert resumed.exit_code == 0, resumed.output
    again = ckpt.load(tmp_path / "next" / "last.pt")
    assert again.epoch == 2 and torch.load(again.path, weights_only=True)["format_version"] == 1


# -- writing -------------------------------------------------------------------------------


def test_a_checkpoint_with_non_finite_weights_is_never_written(tiny_run, tmp_path):
    target = tmp_path / "last.pt"
    good = ckpt.load(ckpt.save(ckpt.load(tiny_run / "last.pt"), target))
    before = target.read_bytes()
    broken = ckpt.load(target)
    broken.model = {k: v.clone() for k, v in good.model.items()}
    broken.model["head.bias"][0] = float("nan")
    with pytest.raises(CharLSTMError, match="NaN or infinite .* the previous last.pt is kept"):
        ckpt.save(broken, target)
    assert target.read_bytes() == before
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_failed_write_leaves_the_previous_file_and_no_temporary(tiny_run, tmp_path):
    target = tmp_path / "last.pt"
    checkpoint = ckpt.load(tiny_run / "last.pt")
    ckpt.save(checkpoint, target)
    before = target.read_bytes()
    checkpoint.progress = {"not plain data": lambda: None}  # torch.save fails half-way
    with pytest.raises((AttributeError, pickle.PicklingError), match="Can't pickle"):
        ckpt.save(checkpoint, target)
    assert target.read_bytes() == before
    assert not list(tmp_path.glob(".*.tmp"))

    (tmp_path / "afile").write_text("")
    with pytest.raises(CharLSTMError, match="cannot write checkpoint .*afile/last.pt"):
        ckpt.save(ckpt.load(tiny_run / "last.pt"), tmp_path / "afile" / "last.pt")
    (tmp_path / "adir.pt").mkdir()
    with pytest.raises(CharLSTMError, match="cannot write checkpoint"):
        ckpt.save(ckpt.load(tiny_run / "last.pt"), tmp_path / "adir.pt")


def test_partial_writes_left_by_a_crash_are_removed(tmp_path):
    stray = tmp_path / ".last.pt.abc123.tmp"
    stray.write_bytes(b"PK\x03\x04half")
    keep = tmp_path / "last.pt"
    keep.write_bytes(b"whole")
    assert ckpt.remove_partial_writes(tmp_path) == [stray]
    assert not stray.exists() and keep.exists()


def test_rewind_drops_log_rows_after_the_checkpoint_and_torn_lines(tmp_path):
    log = runs.StepLog(tmp_path)
    for step in range(1, 11):
        log.write(step, 1 + (step - 1) // 5, 1 + (step - 1) % 5, 1.0 / step, 0.002, 0.5)
    log.close()
    with open(tmp_path / runs.STEPS_FILE, "a", encoding="utf-8") as handle:
        handle.write('{"step": 11, "epo')  # a crash mid-line
    runs.append_metrics(tmp_path, {"epoch": 1, "step": 5})
    runs.append_metrics(tmp_path, {"epoch": 2, "step": 10})
    runs.rewind(tmp_path, tmp_path, epoch=1, step=7)
    assert [row["step"] for row in runs.read_steps(tmp_path)] == [1, 2, 3, 4, 5, 6, 7]
    assert runs.read_steps(tmp_path)[2]["loss"] == 1.0 / 3  # exact floats
    assert [row["epoch"] for row in runs.read_metrics(tmp_path)] == [1]
