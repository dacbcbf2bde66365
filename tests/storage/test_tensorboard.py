"""``charlstm train --tensorboard`` (:mod:`charlstm.storage.board`): ``RUN/tensorboard/``
read back by TensorBoard's own reader.

Every run is a real command (``CliRunner``, or ``python -m charlstm`` where a process is
killed or tensorboard must be missing). The curves must hold the numbers of
``steps.jsonl`` and ``metrics.jsonl`` at their steps (as float32, TensorBoard's scalars),
and a run resumed after a kill, or from a checkpoint older than its events, must show
each step once: the steps of one uninterrupted run.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from charlstm.storage import board, runs
from charlstm.storage import checkpoint as ckpt
from tests.helpers import ENV, FAST, PACED, command, invoke

pytest.importorskip("tensorboard", reason="tensorboard (the [tensorboard] extra) is not installed")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402
from tensorboard.backend.event_processing.event_file_loader import (  # noqa: E402
    LegacyEventFileLoader,
)
from torch.utils.tensorboard import SummaryWriter  # noqa: E402

STEP_TAGS = {"loss/step": "loss", "optimizer/lr": "lr", "optimizer/grad_norm": "grad_norm"}
SCORE_TAGS = {
    "loss/train": "train_loss",
    "perplexity/train": "train_ppl",
    "loss/heldout": "val_loss",
    "perplexity/heldout": "val_ppl",
    "speed/chars_per_sec": "chars_per_sec",
}
BITS_TAGS = {"bits_per_char/train": "train_loss", "bits_per_char/heldout": "val_loss"}
ALL_TAGS = {*STEP_TAGS, *SCORE_TAGS, *BITS_TAGS}
SETTINGS = [*FAST, "--seed", "5", "--device", "cpu", "--tensorboard"]


def curves(run: Path) -> dict[str, list[tuple[int, float]]]:
    """Each tag's (step, value) points, as TensorBoard loads them (all of them kept)."""
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    return {
        tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]
    }


def raw_steps(run: Path) -> dict[str, list[int]]:
    """Each tag's steps in the files as they are, read one after the other in name order
    (as a plain reader does: no purging, no SessionLog)."""
    found: dict[str, list[int]] = {}
    for path in sorted((run / "tensorboard").iterdir()):
        for event in LegacyEventFileLoader(str(path)).Load():
            for value in event.summary.value:
                found.setdefault(value.tag, []).append(event.step)
    return found


def f32(value: float) -> float:
    return float(torch.tensor(value, dtype=torch.float32))


def assert_curves_are_the_logs(run: Path) -> dict[str, list[tuple[int, float]]]:
    """The curves hold exactly the rows of steps.jsonl and metrics.jsonl, at their steps."""
    found = curves(run)
    assert set(found) == ALL_TAGS
    steps, metrics = runs.read_steps(run), runs.read_metrics(run)
    for tag, key in STEP_TAGS.items():
        assert found[tag] == [(row["step"], f32(row[key])) for row in steps], tag
    for tag, key in SCORE_TAGS.items():
        assert found[tag] == [(row["step"], f32(row[key])) for row in metrics], tag
    for tag, key in BITS_TAGS.items():
        expected = [(row["step"], f32(row[key] / math.log(2))) for row in metrics]
        assert found[tag] == expected, tag
    for tag, points in found.items():
        steps_of_tag = [step for step, _ in points]
        assert steps_of_tag == sorted(set(steps_of_tag)), f"{tag}: a step twice or out of order"
    assert raw_steps(run) == steps_by_tag(found)  # the files themselves, not only TensorBoard
    return found


def steps_by_tag(found: dict[str, list[tuple[int, float]]]) -> dict[str, list[int]]:
    return {tag: [step for step, _ in points] for tag, points in found.items()}


def train(*args: object) -> None:
    result = invoke("train", *args)
    assert result.exit_code == 0, result.output


def test_curves_hold_the_numbers_of_steps_and_metrics_jsonl(small_corpus, tmp_path):
    run = tmp_path / "run"
    train(small_corpus, *SETTINGS, "--epochs", "2", "--run-dir", run)
    found = assert_curves_are_the_logs(run)
    assert steps_by_tag(found)["loss/step"] == list(range(1, 61))  # 30 steps an epoch
    assert steps_by_tag(found)["loss/heldout"] == [30, 60]
    assert all(row["grad_norm"] > 0 for row in runs.read_steps(run))


@pytest.fixture(scope="module")
def straight(small_corpus, tmp_path_factory) -> Path:
    """Three epochs in one go: the curves every interrupted run must end with."""
    run = tmp_path_factory.mktemp("straight") / "run"
    train(small_corpus, *SETTINGS, "--epochs", "3", "--run-dir", run)
    return run


def test_resuming_an_older_checkpoint_drops_the_events_of_the_lost_future(
    straight, small_corpus, tmp_path
):
    """Events past the checkpoint a run resumes from (here: a whole epoch written after
    it) are replayed, never shown twice."""
    run = tmp_path / "run"
    train(small_corpus, *SETTINGS, "--epochs", "1", "--run-dir", run)
    shutil.copy(run / "last.pt", tmp_path / "epoch1.pt")
    train("--resume", run, "--epochs", "2")  # the events reach step 60
    live = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0})
    live.Reload()  # a TensorBoard showing the run meanwhile
    shutil.copy(tmp_path / "epoch1.pt", run / "epoch1.pt")
    train("--resume", run / "epoch1.pt", "--epochs", "3")  # back to step 30, then on to 90
    found = assert_curves_are_the_logs(run)
    assert steps_by_tag(found) == steps_by_tag(curves(straight))
    live.Reload()  # it read steps 31 to 60 before: they are replaced, not doubled (purge_step)
    assert [e.step for e in live.Scalars("loss/step")] == list(range(1, 91))
    assert [e.step for e in live.Scalars("loss/heldout")] == [30, 60, 90]
    assert found["loss/step"] == curves(straight)["loss/step"]  # the same trajectory


@pytest.mark.skipif(os.name != "posix", reason="needs POSIX signals")
def test_a_run_killed_mid_epoch_resumes_with_each_step_once(straight, small_corpus, tmp_path):
    run = tmp_path / "run"
    process = subprocess.Popen(
        [sys.executable, "-c", PACED, "train", small_corpus, *SETTINGS, "--epochs", "3"]
        + ["--checkpoint-every", "7", "--run-dir", str(run)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:  # killed after its third checkpoint (step 14)
            assert process.poll() is None, process.communicate()
            if (run / "last.pt").is_file() and ckpt.load(run / "last.pt").step >= 14:
                break
            time.sleep(0.01)
    finally:
        process.kill()
        process.communicate()
    killed = ckpt.load(run / "last.pt").step
    assert 14 <= killed < 90
    done = subprocess.run(
        command(1, "train", "--resume", run, "--checkpoint-every", "0"),
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    # (the values are the run's own logs': this process and CliRunner's may differ in
    # their last bits, their thread counts differing)
    found = assert_curves_are_the_logs(run)
    assert steps_by_tag(found) == steps_by_tag(curves(straight))


def test_a_resume_keeps_tensorboard_and_no_tensorboard_stops_it(small_corpus, tmp_path):
    run = tmp_path / "run"
    options = [*FAST, "--device", "cpu"]
    train(small_corpus, *options, "--epochs", "1", "--run-dir", run)
    assert not (run / "tensorboard").exists()
    train("--resume", run, "--epochs", "2", "--tensorboard")  # settable on resume
    train("--resume", run, "--epochs", "3")  # remembered
    assert ckpt.load(run / "last.pt").train_config.tensorboard
    train("--resume", run, "--epochs", "4", "--no-tensorboard")
    assert not ckpt.load(run / "last.pt").train_config.tensorboard
    found = steps_by_tag(curves(run))
    assert found["loss/step"] == list(range(31, 91))
    assert found["loss/heldout"] == [60, 90]


def test_overwrite_removes_the_replaced_runs_events(small_corpus, tmp_path):
    run = tmp_path / "run"
    train(small_corpus, *SETTINGS, "--max-steps", "5", "--run-dir", run)
    assert (run / "tensorboard").is_dir()
    train(small_corpus, *FAST, "--max-steps", "5", "--run-dir", run, "--overwrite")
    assert not (run / "tensorboard").exists()


@pytest.mark.skipif(
    os.name != "posix" or not torch.distributed.is_available(),
    reason="needs torch.distributed",
)
def test_under_torchrun_rank_0_alone_writes(small_corpus, tmp_path):
    run = tmp_path / "run"
    args = ["train", small_corpus, *SETTINGS, "--max-steps", "12", "--eval-every", "6"]
    done = subprocess.run(
        command(2, *args, "--run-dir", run),
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert len(list((run / "tensorboard").iterdir())) == 1  # one writer
    assert steps_by_tag(assert_curves_are_the_logs(run))["loss/heldout"] == [6, 12]


# -- without the package -------------------------------------------------------------------

WITHOUT_TENSORBOARD = """
import sys
sys.modules["tensorboard"] = None  # as if it were not installed
from charlstm.cli.app import main
sys.argv = ["charlstm", *sys.argv[1:]]
main()
"""


def test_without_the_package_the_option_is_one_error_line_and_no_run_dir(small_corpus, tmp_path):
    run = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_TENSORBOARD, "train", small_corpus, *SETTINGS]
        + ["--run-dir", str(run)],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        "error: --tensorboard needs the tensorboard package; install it: "
        "pip install 'charlstm[tensorboard]' (or turn --tensorboard off)"
    ]
    assert not run.exists()


def test_without_the_package_a_resume_may_turn_it_off_and_is_told_of_the_events(
    small_corpus, tmp_path
):
    run = tmp_path / "run"
    train(small_corpus, *SETTINGS, "--max-steps", "5", "--run-dir", run)
    runs.release_run_dir(run)  # for the processes below
    resume = [sys.executable, "-c", WITHOUT_TENSORBOARD, "train", "--resume", str(run)]
    refused = subprocess.run(
        [*resume, "--max-steps", "10"], capture_output=True, text=True, env=ENV, check=False
    )
    assert refused.returncode == 2 and "pip install 'charlstm[tensorboard]'" in refused.stderr
    assert ckpt.load(run / "last.pt").step == 5  # the run as it was
    done = subprocess.run(
        [*resume, "--max-steps", "10", "--no-tensorboard"],
        capture_output=True,
        text=True,
        env=ENV,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert f"{run / 'tensorboard'} was not rewound to step 5" in done.stdout
    assert ckpt.load(run / "last.pt").step == 10


# A Board whose files may not grow past 3,000 bytes: a full disk (see tests/storage/test_faults.py).
FULL_DISK = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (3000, 3000))
from charlstm.errors import WriteFailed
from charlstm.storage.board import Board
events = Board(sys.argv[1])
try:
    for step in range(1, 1000):
        events.step(step, 1.0, 0.1, 0.5)
        if step % 10 == 0:
            events.flush()  # as before a checkpoint
except WriteFailed as err:
    print(err)
"""


@pytest.mark.skipif(os.name != "posix", reason="needs rlimits")
def test_a_full_disk_is_one_line_and_no_traceback_from_the_writer_thread(tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", FULL_DISK, str(tmp_path)],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert done.stdout.startswith(f"cannot write {tmp_path / 'tensorboard'}: File too large")


# -- the rewind, on event files written by hand ------------------------------------------------


def write_events(directory: Path, name: str, steps: range, value: float = 1.0) -> Path:
    """An event file of ``loss/step`` at ``steps``, named ``events.out.tfevents.NAME``."""
    directory.mkdir(parents=True, exist_ok=True)
    made = directory / "made"
    writer = SummaryWriter(str(made))
    for step in steps:
        writer.add_scalar("loss/step", value, step)
    writer.close()
    (written,) = made.iterdir()
    path = written.rename(directory / f"events.out.tfevents.{name}")
    made.rmdir()
    return path


def steps_in(run: Path) -> list[int]:
    return [step for step, _ in curves(run).get("loss/step", [])]


def test_rewind_cuts_each_file_before_its_first_step_past_the_checkpoint(tmp_path):
    directory = tmp_path / "tensorboard"
    first = write_events(directory, "0000000001.host.1.0", range(1, 11))
    whole = first.read_bytes()
    second = write_events(directory, "0000000002.host.2.0", range(11, 21))  # a resumed writer
    with open(second, "ab") as handle:
        handle.write(b"\x20\x00\x00")  # a record cut short by a kill
    board.rewind(tmp_path, tmp_path, step=14)
    assert sorted(p.name for p in directory.iterdir()) == [first.name, second.name]
    assert first.read_bytes() == whole
    assert steps_in(tmp_path) == list(range(1, 15))
    board.rewind(tmp_path, tmp_path, step=7)  # resumed from an older checkpoint
    assert steps_in(tmp_path) == list(range(1, 8))
    assert second.stat().st_size > 0  # its header is kept: a TensorBoard reading it goes on


def test_a_branch_copies_the_events_and_leaves_the_source_as_it_is(tmp_path):
    source, target = tmp_path / "a", tmp_path / "b"
    target.mkdir()
    path = write_events(source / "tensorboard", "0000000001.host.1.0", range(1, 9))
    before = path.read_bytes()
    board.rewind(source, target, step=4)
    assert path.read_bytes() == before
    assert steps_in(target) == [1, 2, 3, 4]
    assert steps_in(source) == list(range(1, 9))
