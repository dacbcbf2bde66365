"""Runs that survive: kill -9, SIGTERM, Ctrl-C, a torn checkpoint write, divergence,
fine-tuning from a checkpoint.

The interruption tests run ``python -m charlstm train`` as real processes, stop them
after a checkpoint, resume them, and compare ``steps.jsonl`` (the loss of every optimizer
step) and the final weights with one uninterrupted run of the same seed: they must be
equal, not close.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from charlstm.errors import CharLSTMError
from charlstm.storage import checkpoint as ckpt
from charlstm.storage import runs
from charlstm.training.start import prepare_training
from tests.helpers import ENV, FAST, PACED, copy_run, invoke, same_weights

POSIX = pytest.mark.skipif(os.name != "posix", reason="needs POSIX signals")
EVERY = 7  # --checkpoint-every: checkpoints land in the middle of 30-batch epochs
EPOCHS = 6
SETTINGS = [
    "--hidden", "32", "--batch-size", "8", "--num-steps", "20", "--dropout", "0.3",
    "--sample-every", "0", "--seed", "5", "--device", "cpu",
    "--epochs", str(EPOCHS), "--checkpoint-every", str(EVERY),
]  # fmt: skip


def start_paced(*args: object) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", PACED, *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )


def charlstm(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "charlstm", *map(str, args)],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
        check=False,
    )


def wait_for_checkpoint(process: subprocess.Popen, path: Path, step: int) -> None:
    """Poll ``path`` until it holds at least ``step`` optimizer steps."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"training ended ({process.returncode}) early: {process.stderr.read()}")
        try:
            if ckpt.load(path).step >= step:
                return
        except CharLSTMError:
            pass  # not written yet
        time.sleep(0.01)
    pytest.fail(f"no checkpoint with step {step} after 120 s")


@pytest.fixture(scope="module")
def reference(small_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One uninterrupted run with the settings every interrupted run uses."""
    run = tmp_path_factory.mktemp("reference") / "run"
    done = charlstm("train", small_corpus, *SETTINGS, "--run-dir", run)
    assert done.returncode == 0, done.stderr
    steps = runs.read_steps(run)
    assert [row["step"] for row in steps] == list(range(1, len(steps) + 1))
    assert ckpt.load(run / "last.pt").step == len(steps) == EPOCHS * 30
    return run


@POSIX
def test_kill_9_after_a_checkpoint_then_resume_replays_the_same_losses(
    reference, small_corpus, tmp_path
):
    run = tmp_path / "run"
    process = start_paced("train", small_corpus, *SETTINGS, "--run-dir", run)
    wait_for_checkpoint(process, run / "last.pt", EVERY)
    process.kill()
    process.communicate()
    assert process.returncode == -signal.SIGKILL
    killed = ckpt.load(run / "last.pt")
    total = len(runs.read_steps(reference))
    assert 0 < killed.step < total, "the run ended before it could be killed"
    assert killed.step % EVERY == 0 or killed.batch == 0

    done = charlstm("train", "--resume", run)
    assert done.returncode == 0, done.stderr
    assert (
        f"resuming {run / 'last.pt'} at epoch {killed.epoch + 1}, batch {killed.batch}, "
        f"step {killed.step}"
    ) in done.stdout
    assert runs.read_steps(run) == runs.read_steps(reference)  # every step, bit for bit
    assert same_weights(run / "last.pt", reference / "last.pt")
    print(
        f"killed after step {killed.step} (epoch {killed.epoch + 1}, batch {killed.batch}); "
        f"the losses of steps {killed.step + 1}..{total} after resuming equal the "
        "uninterrupted run's"
    )


@POSIX
@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_sigterm_and_ctrl_c_save_and_print_the_resume_command(
    reference, small_corpus, tmp_path, signum, code
):
    run = tmp_path / "run"
    process = start_paced("train", small_corpus, *SETTINGS, "--run-dir", run)
    wait_for_checkpoint(process, run / "last.pt", EVERY)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == code
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    name = signal.Signals(signum).name
    assert lines[0].startswith(f"error: {name}: training stopped, state saved in {run}")
    saved = ckpt.load(run / "last.pt")
    assert saved.step == len(runs.read_steps(run))  # saved after the step it was in

    command = shlex.split(lines[0].split("continue with: ")[1])
    assert command[:3] == ["charlstm", "train", "--resume"]
    done = charlstm(*command[1:])  # exactly the printed command
    assert done.returncode == 0, done.stderr
    assert runs.read_steps(run) == runs.read_steps(reference)
    assert same_weights(run / "last.pt", reference / "last.pt")


TEAR_THIRD_SAVE = """
import io, os, runpy, sys, time
import torch

real_save, calls = torch.save, []

def torn_save(obj, handle, *args, **kwargs):
    calls.append(1)
    if len(calls) < 3:  # the start of the run, then step 7; the third save is torn
        return real_save(obj, handle, *args, **kwargs)
    buffer = io.BytesIO()
    real_save(obj, buffer, *args, **kwargs)
    data = buffer.getvalue()
    handle.write(data[: len(data) // 2])
    handle.flush()
    os.write(2, b"TORN\\n")
    time.sleep(600)  # killed here, half-way through writing the checkpoint

torch.save = torn_save
sys.argv = ["charlstm", *sys.argv[1:]]
runpy.run_module("charlstm", run_name="__main__", alter_sys=True)
"""


@POSIX
def test_kill_during_a_checkpoint_write_keeps_the_previous_one(reference, small_corpus, tmp_path):
    run = tmp_path / "run"
    args = ["train", str(small_corpus), *SETTINGS, "--run-dir", str(run)]
    process = subprocess.Popen(
        [sys.executable, "-c", TEAR_THIRD_SAVE, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    assert process.stderr.readline().strip() == "TORN"
    process.kill()
    process.communicate()
    torn = list(run.glob(".last.pt.*.tmp"))
    assert len(torn) == 1 and torn[0].stat().st_size > 0  # the half-written file is there
    with pytest.raises(CharLSTMError, match="not a readable charlstm checkpoint"):
        ckpt.load(torn[0])
    assert ckpt.load(run / "last.pt").step == EVERY  # the previous checkpoint, whole

    done = charlstm("train", "--resume", run)
    assert done.returncode == 0, done.stderr
    assert f"removed {torn[0]}" in done.stdout
    assert not list(run.glob("*.tmp"))
    assert runs.read_steps(run) == runs.read_steps(reference)
    assert same_weights(run / "last.pt", reference / "last.pt")


def test_divergence_stops_with_one_line_and_a_lower_lr_resumes(tiny_run, tmp_path):
    run = copy_run(tiny_run, tmp_path / "run")
    good = (run / "last.pt").read_bytes()

    result = invoke("train", "--resume", run, "--epochs", "2", "--lr", "1e36", "--clip", "0")
    assert result.exit_code == 2
    line = result.stderr.strip()
    assert len(line.splitlines()) == 1
    # inf or nan: which one comes first depends on the float path, not on charlstm
    assert re.search(r"loss became (inf|nan) at step 32 \(epoch 2\)", line), line
    assert f"; the last good checkpoint is {run}" in line
    assert f"charlstm train --resume {run} --lr" in line
    assert (run / "last.pt").read_bytes() == good  # nothing diverged was saved

    result = invoke("train", "--resume", run, "--epochs", "2", "--lr", "0.002")
    assert result.exit_code == 0, result.output
    losses = [row["loss"] for row in runs.read_steps(run)]
    assert len(losses) == 60 and all(0 < loss < 10 for loss in losses)
    # steps.jsonl holds no trace of the diverged attempt: each step once
    assert [row["step"] for row in runs.read_steps(run)] == list(range(1, 61))


def test_after_divergence_best_pt_is_the_fallback(tiny_run, tmp_path):
    """A checkpoint written between the blow-up and the non-finite loss holds huge (finite)
    weights; resuming it fails again, and ``--resume RUN/best.pt`` is the way back."""
    run = copy_run(tiny_run, tmp_path / "run")
    diverge = ["--epochs", "2", "--lr", "1e36", "--clip", "0", "--checkpoint-every", "1"]
    assert invoke("train", "--resume", run, *diverge).exit_code == 2
    assert ckpt.load(run / "last.pt").step == 31  # saved after the step that blew up
    again = invoke("train", "--resume", run, "--epochs", "2", "--lr", "0.002")
    assert again.exit_code == 2 and "loss became" in again.stderr

    result = invoke("train", "--resume", run / "best.pt", "--epochs", "2", "--lr", "0.002")
    assert result.exit_code == 0, result.output
    assert f"resuming {run / 'best.pt'} at epoch 2, batch 0, step 30" in result.stdout
    assert [row["step"] for row in runs.read_steps(run)] == list(range(1, 61))
    assert ckpt.load(run / "last.pt").epoch == 2


def test_resume_into_another_run_dir_branches_and_never_overwrites(tiny_run, tmp_path):
    source, other, branch = tmp_path / "source", tmp_path / "other", tmp_path / "branch"
    for run in (source, other):
        copy_run(tiny_run, run)
    files = {p: p.read_bytes() for p in source.iterdir()} | {
        p: p.read_bytes() for p in other.iterdir()
    }

    refused = invoke("train", "--resume", source, "--run-dir", other, "--epochs", "2")
    assert refused.exit_code == 2 and "already holds a run" in refused.stderr

    result = invoke("train", "--resume", source, "--run-dir", branch, "--epochs", "2")
    assert result.exit_code == 0, result.output
    assert {p: p.read_bytes() for p in files} == files  # both runs untouched
    assert [row["epoch"] for row in runs.read_metrics(branch)] == [1, 2]
    assert len(runs.read_steps(branch)) == 60


# -- fine-tuning ---------------------------------------------------------------------------

NEW_TEXT = "晴天的雨 rain 下个不停\n" * 150


def test_init_from_starts_a_new_run_from_the_exact_weights(tiny_run, small_corpus, tmp_path):
    base = ckpt.load(tiny_run / "best.pt")

    def fine_tune(model_options, run_dir):
        return prepare_training(
            small_corpus,
            model_options,
            {"batch_size": 8, "num_steps": 20, "sample_every": 0, "epochs": 1, "lr": 1e-3},
            {},
            run_dir=run_dir,
            init_from=tiny_run,
            log=lambda _: None,
            progress_bar=False,
        )

    trainer = fine_tune({"dropout": 0.1}, tmp_path / "ft")  # regularisation may change
    weights = trainer.model.state_dict()
    assert weights.keys() == base.model.keys()
    assert all(torch.equal(weights[k], base.model[k]) for k in weights)
    assert (trainer.progress.epoch, trainer.progress.step) == (0, 0)
    assert trainer.optimizer.state_dict()["state"] == {}  # a fresh optimizer
    assert trainer.model_config.dropout == 0.1 and trainer.vocab == base.vocab
    with pytest.raises(CharLSTMError, match="fine-tuning keeps the architecture"):
        fine_tune({"hidden_size": 64}, tmp_path / "wider")
    assert not (tmp_path / "wider").exists()


def test_init_from_lists_the_missing_characters(tiny_run, tmp_path):
    corpus = tmp_path / "new.txt"
    corpus.write_text(NEW_TEXT, encoding="utf-8")
    vocab = ckpt.load(tiny_run / "best.pt").vocab
    missing = vocab.missing(NEW_TEXT)
    assert len(missing) > 3
    result = invoke("train", corpus, "--init-from", tiny_run, "--run-dir", tmp_path / "ft", *FAST)
    assert result.exit_code == 2
    line = result.stderr.strip()
    assert len(line.splitlines()) == 1 and "--extend-vocab" in line
    assert f"{len(missing)} characters of the new corpus are not in the checkpoint's" in line
    assert all(repr(ch) in line for ch in missing)
    assert not (tmp_path / "ft").exists()


def test_extend_vocab_keeps_old_rows_exactly_and_adds_fresh_ones(tiny_run, tmp_path):
    corpus = tmp_path / "new.txt"
    corpus.write_text(NEW_TEXT, encoding="utf-8")
    base = ckpt.load(tiny_run / "best.pt")
    old = len(base.vocab)
    trainer = prepare_training(
        corpus,
        {},
        {"batch_size": 8, "num_steps": 20, "sample_every": 0, "epochs": 1, "seed": 4},
        {},
        run_dir=tmp_path / "ft",
        init_from=tiny_run,
        extend_vocab=True,
        log=lambda _: None,
        progress_bar=False,
    )
    vocab = trainer.vocab
    assert vocab.idx_to_char[:old] == base.vocab.idx_to_char  # old indices unchanged
    # new characters in sorted order: the same rule for a text and a prepared corpus
    assert vocab.idx_to_char[old:] == sorted(base.vocab.missing(NEW_TEXT))
    weights = trainer.model.state_dict()
    for key in ("embedding.weight", "head.weight", "head.bias"):
        assert torch.equal(weights[key][:old], base.model[key])  # kept exactly
        new = weights[key][old:]
        assert new.shape[0] == len(vocab) - old and torch.isfinite(new).all()
        assert not (new == 0).all()
    embedding = weights["embedding.weight"]
    for row in embedding[old:]:  # fresh rows, not copies of trained ones
        assert not any(torch.equal(row, trained) for trained in embedding[:old])
    bound = 1 / trainer.model_config.hidden_size**0.5  # nn.Linear's initial range
    assert weights["head.weight"][old:].abs().max() <= bound
    for key, value in base.model.items():  # everything else is the checkpoint's
        if key not in ("embedding.weight", "head.weight", "head.bias"):
            assert torch.equal(weights[key], value)

    result = trainer.fit()  # and it trains, as a new run
    assert result.final is not None and result.final.epoch == 1
    saved = ckpt.load(tmp_path / "ft" / "last.pt")
    assert saved.vocab == vocab and saved.model_config.vocab_size == len(vocab)
    generated = invoke(
        "generate",
        "--checkpoint",
        tmp_path / "ft",
        "--prefix",
        "晴天",
        "--length",
        "5",
        "--format",
        "jsonl",
    )  # jsonl: the text apart from the line it is printed on (it may end in a newline)
    assert generated.exit_code == 0, generated.output
    text = json.loads(generated.stdout)["text"]
    assert text.startswith("晴天") and len(text) == 7
