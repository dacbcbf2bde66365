"""Data parallelism under PyTorch's own ``torchrun`` equals one process, dropout and all.

Every run here is a real command: ``torchrun --standalone --nproc_per_node=2 -m charlstm
train ...`` (gloo on the CPU, two processes) against plain ``python -m charlstm train``
with the same global ``--batch-size``, at the default dropout (and, on the scratch backend,
with variational, embedding dropout, DropConnect and random windows as well): every rank
draws the masks of the whole global batch and keeps its rows. The independent runs start
together (module fixtures), so the file costs about two rounds of process start-up.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from charlstm.config import ModelConfig
from charlstm.model import build_model
from charlstm.storage import checkpoint as ckpt
from charlstm.storage import runs
from tests.helpers import ENV, TORCHRUN, command

pytestmark = [
    pytest.mark.skipif(
        os.name != "posix" or not torch.distributed.is_available(),
        reason="needs POSIX signals and torch.distributed",
    ),
    pytest.mark.slow,  # every test starts torchrun's processes
]

STEPS = 20
SETTINGS = [
    "--hidden", "16", "--batch-size", "4", "--num-steps", "12",
    "--eval-every", "10", "--sample-every", "0", "--seed", "5", "--device", "cpu",
]  # fmt: skip
#: Every random draw that depends on the batch, on the scratch backend (the default dropout
#: 0.3 is on in every run here).
SCRATCH = ["--variational", "--embed-dropout", "0.2", "--weight-drop", "0.3",
           "--sampling", "random"]  # fmt: skip
TOLERANCE = 1e-5
NAMES = ("one-torch", "two-torch", "one-scratch", "two-scratch", "two-then-one", "one-then-two")


def start(processes: int, *args: object, cwd: Path | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        command(processes, *args),
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )


def finish(*jobs: subprocess.Popen) -> list[tuple[str, str]]:
    """Wait for every job; each must succeed. Returns (stdout, stderr) per job."""
    outputs = [job.communicate(timeout=600) for job in jobs]
    for job, (out, err) in zip(jobs, outputs, strict=True):
        assert job.returncode == 0, f"{job.args}\n{out}\n{err}"
    return outputs


def train(corpus: Path, run_dir: Path, steps: int, backend: str = "torch") -> list[object]:
    extra = SCRATCH if backend == "scratch" else []
    return ["train", corpus, *SETTINGS, *extra, "--backend", backend, "--max-steps", steps,
            "--run-dir", run_dir]  # fmt: skip


def losses(run_dir: Path) -> list[float]:
    return [row["loss"] for row in runs.read_steps(run_dir)]


def loss_gap(a: Path, b: Path) -> float:
    first, second = losses(a), losses(b)
    assert len(first) == len(second) == STEPS
    return max(abs(x - y) for x, y in zip(first, second, strict=True))


def weight_gap(a: Path, b: Path) -> float:
    first, second = ckpt.load(a / runs.LAST).model, ckpt.load(b / runs.LAST).model
    assert first.keys() == second.keys()
    return max((first[k].double() - second[k].double()).abs().max().item() for k in first)


def held_out(run_dir: Path) -> list[float]:
    return [row["val_loss"] for row in runs.read_metrics(run_dir)]


@pytest.fixture(scope="module")
def trained(small_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The runs compared below, by name: ``one-B`` / ``two-B``: 20 steps of backend B on
    1 / 2 processes (scratch: with :data:`SCRATCH`); ``two-then-one``: 10 steps on 2 (torch
    backend), resumed on 1 to step 20; and ``one-then-two``, the reverse."""
    root = tmp_path_factory.mktemp("ddp")  # every run's working directory too
    dirs = {name: root / name for name in NAMES}
    outputs = finish(
        start(1, *train(small_corpus, dirs["one-torch"], STEPS), cwd=root),
        start(2, *train(small_corpus, dirs["two-torch"], STEPS), cwd=root),
        start(1, *train(small_corpus, dirs["one-scratch"], STEPS, "scratch"), cwd=root),
        start(2, *train(small_corpus, dirs["two-scratch"], STEPS, "scratch"), cwd=root),
        start(2, *train(small_corpus, dirs["two-then-one"], STEPS // 2), cwd=root),
        start(1, *train(small_corpus, dirs["one-then-two"], STEPS // 2), cwd=root),
    )
    finish(
        start(1, "train", "--resume", dirs["two-then-one"], "--max-steps", STEPS, cwd=root),
        start(2, "train", "--resume", dirs["one-then-two"], "--max-steps", STEPS, cwd=root),
    )
    return {**dirs, "two-torch.out": outputs[1]}


@pytest.mark.parametrize("backend", ["torch", "scratch"])
def test_two_processes_take_the_steps_of_one(trained: dict[str, Any], backend: str):
    one, two = trained[f"one-{backend}"], trained[f"two-{backend}"]
    gaps = loss_gap(one, two), weight_gap(one, two)
    print(f"{backend}: max |loss difference| {gaps[0]:.2e}, max |weight difference| {gaps[1]:.2e}")
    assert gaps[0] < TOLERANCE and gaps[1] < TOLERANCE
    assert held_out(one) == pytest.approx(held_out(two), abs=TOLERANCE)
    assert len(held_out(one)) == 2  # scored at steps 10 and 20, by both processes together


@pytest.mark.parametrize("name", ["two-then-one", "one-then-two"])
def test_a_run_resumed_on_another_number_of_processes_continues_exactly(
    trained: dict[str, Any], name: str
):
    reference, resumed = trained["one-torch"], trained[name]
    assert [row["step"] for row in runs.read_steps(resumed)] == list(range(1, STEPS + 1))
    assert loss_gap(reference, resumed) < TOLERANCE
    assert weight_gap(reference, resumed) < TOLERANCE
    assert held_out(resumed) == pytest.approx(held_out(reference), abs=TOLERANCE)


@pytest.mark.parametrize("backend", ["torch", "scratch"])
def test_the_masks_of_a_share_of_the_batch_are_those_rows_of_the_whole_batchs(backend: str):
    """What makes the runs above equal: a model seeded for its rows [lo, hi) of a global
    batch drops exactly what one model seeded alike drops in those rows of the whole batch
    (dropout, variational and embedding dropout, DropConnect)."""
    regularised = {"dropout": 0.3, "embed_dropout": 0.2, "variational": backend == "scratch"}
    if backend == "scratch":
        regularised["weight_drop"] = 0.3
    config = ModelConfig(vocab_size=11, hidden_size=8, num_layers=2, backend=backend,
                         **regularised)  # fmt: skip
    torch.manual_seed(0)
    model = build_model(config).train()
    x = torch.randint(0, 11, (6, 4))  # (T, N)
    model.seed_masks(42, (0, 4), 4)
    whole, _ = model(x)
    parts = []
    for lo, hi in ((0, 1), (1, 3), (3, 4)):  # shares of any size
        model.seed_masks(42, (lo, hi), 4)
        parts.append(model(x[:, lo:hi])[0])
    # equal up to rounding: a matrix product of fewer rows may sum in another order
    assert (torch.cat(parts, dim=1) - whole).abs().max() < 1e-6
    model.seed_masks(43, (0, 4), 4)
    assert not torch.allclose(model(x)[0], whole)  # the masks are drawn: another seed differs
    assert not torch.allclose(model.eval()(x)[0], whole)  # and dropout is on


def test_torchrun_resuming_a_finished_run_succeeds_with_one_line(trained: dict[str, Any]):
    """A retry loop under torchrun ends too: every rank exits 0, rank 0 says why."""
    run_dir = trained["one-torch"]
    [(out, _)] = finish(start(2, "train", "--resume", run_dir, "--max-steps", STEPS))
    assert out.splitlines() == [
        f"nothing to do: the run has already trained 0 epochs ({STEPS} steps), reaching "
        f"--max-steps {STEPS}; pass a larger --epochs or --max-steps (the new total) to continue"
    ]


def test_only_rank_0_writes_files_and_prints(trained: dict[str, Any]):
    run_dir = trained["two-torch"]
    files = {path.name for path in run_dir.iterdir()} - {".lock"}
    assert files == set(runs.RUN_FILES)
    assert {p.name for p in run_dir.parent.iterdir()} == set(NAMES)  # nothing elsewhere
    out, _ = trained["two-torch.out"]
    assert out.count("done: ") == 1 and out.count(f"run {run_dir}:") == 1
    assert "2 processes (torchrun)" in out
    config = json.loads((run_dir / runs.CONFIG_FILE).read_text())
    assert config["processes"] == 2


def test_a_batch_the_processes_cannot_share_is_one_line(small_corpus: Path, tmp_path: Path):
    job = start(2, "train", small_corpus, *SETTINGS, "--batch-size", "3", "--run-dir", tmp_path)
    _, err = job.communicate(timeout=600)
    assert job.returncode != 0
    ours = [line for line in err.splitlines() if line.startswith("error: ")]
    assert ours == [
        "error: --batch-size 3 is not a multiple of the 2 processes torchrun started: it is "
        "the global batch, split evenly between them"
    ], err
    assert not (tmp_path / runs.CONFIG_FILE).exists()  # refused before a file is written


def test_sigterm_to_torchrun_stops_every_rank_and_leaves_a_resumable_last_pt(
    small_corpus: Path, tmp_path: Path
):
    run_dir = tmp_path / "run"
    args = train(small_corpus, run_dir, 100_000)
    job = start(2, *args, "--checkpoint-every", "5")
    deadline = time.monotonic() + 300
    while len(runs.read_steps(run_dir)) < 10:  # steps.jsonl grows at each checkpoint
        assert job.poll() is None and time.monotonic() < deadline, job.communicate()
        time.sleep(0.2)
    job.send_signal(signal.SIGTERM)  # the launcher's pid: torchrun passes it on
    _, err = job.communicate(timeout=120)
    ours = [line for line in err.splitlines() if line.startswith("error: ")]
    assert ours == [
        f"error: SIGTERM: training stopped, state saved in {run_dir / runs.LAST}; continue "
        f"with: charlstm train --resume {run_dir}"
    ], err
    stopped = ckpt.load(run_dir / runs.LAST)
    assert stopped.step == len(runs.read_steps(run_dir)) >= 10
    [(out, _)] = finish(start(1, "train", "--resume", run_dir, "--max-steps", stopped.step + 3))
    assert f"step {stopped.step}" in out
    steps = [row["step"] for row in runs.read_steps(run_dir)]
    assert steps == list(range(1, stopped.step + 4))


COUNT_THREADS_AT_EXIT = """
import atexit, os, sys
from charlstm.cli.app import main

def threads():
    return len(os.listdir("/proc/self/task"))

def record(alone):
    with open(f"threads-{os.environ['RANK']}", "w") as out:
        out.write(f"{alone} {threads()}")

atexit.register(record, threads())  # registered first: it runs after charlstm's exit handler

sys.argv[0] = "charlstm"
main()
"""


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="counts threads in /proc")
def test_a_finished_rank_has_ended_the_process_groups_threads_at_exit(
    small_corpus: Path, tmp_path: Path
):
    """What lets a rank exit cleanly: by the interpreter's teardown, gloo's threads have
    ended. One still releasing the last collective's tensors then aborts the finished
    process (``terminate called without an active exception``, SIGABRT; about one
    2-process run in 30 before ``distributed.leave``), and torchrun reports the job failed."""
    script = tmp_path / "count_threads.py"
    script.write_text(COUNT_THREADS_AT_EXIT)
    args = train(small_corpus, tmp_path / "run", 3)
    job = subprocess.Popen(
        [*TORCHRUN, "--nproc_per_node=2", script, *map(str, args)],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=ENV,
    )  # fmt: skip
    _, err = job.communicate(timeout=600)
    assert job.returncode == 0, err
    for rank in (0, 1):
        alone, left = (tmp_path / f"threads-{rank}").read_text().split()
        assert left == alone, rank  # gloo's worker and transport threads are gone
