"""Faults a user meets for real: a second trainer on a live run, a full disk, kill -9, a
retry loop resuming a finished run.

Nothing here is mocked: the lock test runs two real processes; the write failures come
from ``RLIMIT_FSIZE`` in the child process (with SIGXFSZ ignored, a write past the limit
fails with EFBIG exactly where a full disk fails with ENOSPC: part-way through a file);
the kill test sends real SIGKILLs, at moments drawn from a seeded generator. After each
fault the run resumes, and its ``steps.jsonl`` and weights must equal those of one
uninterrupted run: every step once, bit for bit.
"""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from charlstm.data.corpus import Corpus
from charlstm.data.prepared import PreparedCorpus
from charlstm.errors import CharLSTMError, Locked, WriteFailed
from charlstm.storage import checkpoint as ckpt
from charlstm.storage import locking, runs, safe_io
from tests.helpers import ENV, PACED, invoke, run_charlstm, same_weights

pytestmark = pytest.mark.skipif(os.name != "posix", reason="needs POSIX signals and rlimits")

EPOCHS = 2
TINY = [
    "--hidden", "8", "--batch-size", "4", "--num-steps", "10", "--max-chars", "1200",
    "--dropout", "0.3", "--sample-every", "0", "--seed", "3", "--device", "cpu",
    "--checkpoint-every", "1",
]  # fmt: skip
STEPS = EPOCHS * 27  # 1,080 training characters / (4 x 10) per batch
EFBIG_FIX = (
    "File too large{note}; free space on the disk holding {dir} "
    "(or raise the file-size limit, ulimit -f)"
)

run = run_charlstm


def one_error(result: subprocess.CompletedProcess, code: int = 1) -> str:
    """The one line a failed command prints: exit ``code``, no traceback, nothing else."""
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert result.returncode == code, result.stderr
    return lines[0]


def temporary_files(directory: Path) -> list[Path]:
    return [p for p in directory.iterdir() if p.name.endswith(".tmp") or p.name == ".write-test"]


@pytest.fixture(scope="module")
def reference(small_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One uninterrupted run with the settings every faulty run uses."""
    directory = tmp_path_factory.mktemp("reference") / "run"
    done = run("train", small_corpus, *TINY, "--epochs", EPOCHS, "--run-dir", directory)
    assert done.returncode == 0, done.stderr
    assert [r["step"] for r in runs.read_steps(directory)] == list(range(1, STEPS + 1))
    return directory


# -- one writer per run directory ----------------------------------------------------------


@pytest.mark.slow
def test_a_second_trainer_is_refused_at_once_naming_the_first_ones_pid(
    reference, small_corpus, tmp_path
):
    directory = tmp_path / "run"
    first = subprocess.Popen(
        [sys.executable, "-c", PACED, "train", small_corpus, *TINY, "--epochs", "500",
         "--run-dir", directory],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=ENV,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while True:  # until it holds the lock and has written a checkpoint
            assert first.poll() is None, first.stderr.read()
            assert time.monotonic() < deadline, "the first trainer never took its lock"
            lock = directory / locking.LOCK_FILE
            if lock.is_file() and lock.read_text().strip() == str(first.pid):
                try:
                    if ckpt.load(directory / "last.pt").step >= 1:
                        break
                except CharLSTMError:
                    pass
            time.sleep(0.05)
        refusal = (
            f"error: run directory {directory} is in use by another charlstm process "
            f"(pid {first.pid}); two writers would overwrite each other's files: wait for it "
            "to finish or stop it, then try again"
        )
        assert one_error(run("train", "--resume", directory, "--epochs", "500")) == refusal
        replace = ["train", small_corpus, *TINY, "--run-dir", directory, "--overwrite"]
        assert one_error(run(*replace)) == refusal  # a live run is never deleted
        assert ckpt.load(directory / "last.pt").step >= 1
        shown = run("info", directory)  # readers need no lock
        assert shown.returncode == 0 and "checkpoint" in shown.stdout, shown.stderr
    finally:
        first.kill()
        first.communicate()
    killed = ckpt.load(directory / "last.pt")
    # kill -9 drops the lock: the run continues at once
    done = run("train", "--resume", directory, "--epochs", killed.epoch + 1)
    assert done.returncode == 0, done.stderr


HOLD = """
import sys, time
from charlstm.storage import locking
with locking.exclusive(sys.argv[1], what="prepared-corpus directory"):
    print("held", flush=True)
    time.sleep(600)
"""


def test_the_lock_guards_any_directory_and_is_reentrant_in_one_process(tmp_path):
    directory = tmp_path / "prepared"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(directory)], stdout=subprocess.PIPE, text=True, env=ENV
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        message = (
            f"prepared-corpus directory {directory} is in use by another charlstm process "
            f"(pid {holder.pid})"
        )
        with pytest.raises(Locked, match=message.replace("(", r"\(").replace(")", r"\)")):
            with runs.run_lock(directory, what="prepared-corpus directory"):
                pass
        assert Locked("x").exit_code == 1
    finally:
        holder.kill()
        holder.communicate()
    with runs.run_lock(directory), runs.run_lock(directory):  # the same process: re-entrant
        assert (directory / locking.LOCK_FILE).read_text().strip() == str(os.getpid())
    assert locking.is_held_elsewhere(directory) is None


# -- a finished run resumed: success with nothing to do -----------------------------------


def files_of(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


def nothing_to_do(code: int, stdout: str, stderr: str) -> str:
    """The one line a resume with nothing to do prints: on stdout, exit 0, nothing else."""
    assert code == 0 and stderr == "", stderr
    lines = stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("nothing to do: "), stdout
    return lines[0]


def test_a_finished_run_resumed_to_the_target_it_reached_exits_0_and_a_larger_one_continues(
    reference, tmp_path
):
    """What a retry loop (``until charlstm train --resume RUN; do sleep 60; done``) needs:
    once the run is complete, the resume succeeds without touching it. The first command is
    a real process (its exit status is what the loop sees); the others go in-process."""
    directory = tmp_path / "run"
    shutil.copytree(reference, directory)
    before = files_of(directory)
    done = run("train", "--resume", directory)
    says = (
        f"nothing to do: the run has already trained {EPOCHS} epochs ({STEPS} steps), reaching "
        "--epochs {target}; pass a larger --epochs or --max-steps (the new total) to continue"
    )
    assert nothing_to_do(done.returncode, done.stdout, done.stderr) == says.format(target=EPOCHS)
    for target in (EPOCHS, 1):  # the run's own target given again, and a smaller one
        done = invoke("train", "--resume", directory, "--epochs", target)
        assert nothing_to_do(done.exit_code, done.stdout, done.stderr) == says.format(target=target)
    assert files_of(directory) == before

    more = invoke("train", "--resume", directory, "--epochs", EPOCHS + 1, "--max-steps", STEPS + 6)
    assert more.exit_code == 0, more.output
    done = invoke("train", "--resume", directory)  # the saved target is now --max-steps
    assert nothing_to_do(done.exit_code, done.stdout, done.stderr) == (
        f"nothing to do: the run has already trained {EPOCHS} epochs ({STEPS + 6} steps), "
        f"reaching --max-steps {STEPS + 6}; pass a larger --epochs or --max-steps (the new "
        "total) to continue"
    )
    more = invoke("train", "--resume", directory, "--max-steps", STEPS + 8)
    assert more.exit_code == 0, more.output
    assert [r["step"] for r in runs.read_steps(directory)] == list(range(1, STEPS + 9))
    assert runs.read_steps(directory)[:STEPS] == runs.read_steps(reference)


# -- every write can fail cleanly ----------------------------------------------------------


def test_a_full_disk_at_a_checkpoint_keeps_the_previous_one_and_resume_is_exact(
    reference, small_corpus, tmp_path
):
    directory = tmp_path / "run"
    command = ["train", small_corpus, *TINY, "--epochs", EPOCHS, "--run-dir", directory]
    # 10 kB: not even the first checkpoint (15 kB, before the optimizer has state) fits
    line = one_error(run(*command, limit=10_000))
    fix = EFBIG_FIX.format(note="", dir=directory)
    assert line == (
        f"error: cannot write checkpoint {directory / 'last.pt'}: {fix} and start the run "
        "again with the same command and --overwrite"
    )
    assert not (directory / "last.pt").exists() and not temporary_files(directory)
    assert one_error(run("train", "--resume", directory), code=2) == (
        f"error: no checkpoint (best.pt or last.pt) in {directory}: the run stopped before "
        "its first checkpoint was written; start it again with the same command and --overwrite"
    )

    # 20 kB: the first checkpoint fits, the one after step 1 (with Adam's state) does not;
    # inside an epoch, so it must not be reported as "training failed"
    line = one_error(run(*command, "--overwrite", limit=20_000))
    fix = EFBIG_FIX.format(note=" (the previous last.pt is kept, whole)", dir=directory)
    assert line == (
        f"error: cannot write checkpoint {directory / 'last.pt'}: {fix} and resume with: "
        f"charlstm train --resume {directory}"
    )
    assert ckpt.load(directory / "last.pt").step == 0  # the previous checkpoint, whole
    assert not temporary_files(directory)

    done = run("train", "--resume", directory)  # the printed command, the disk freed
    assert done.returncode == 0, done.stderr
    assert runs.read_steps(directory) == runs.read_steps(reference)
    assert same_weights(directory / "last.pt", reference / "last.pt")


def test_a_full_disk_while_appending_steps_jsonl_leaves_whole_lines(small_corpus, tmp_path):
    """Many steps (batch 1), a checkpoint per epoch: steps.jsonl outgrows the checkpoints."""
    settings = [small_corpus, *TINY[:-2], "--batch-size", "1", "--num-steps", "5",
                "--checkpoint-every", "0", "--epochs", "2"]  # fmt: skip
    whole, directory = tmp_path / "whole", tmp_path / "run"
    assert run("train", *settings, "--run-dir", whole).returncode == 0
    checkpoint_size = (whole / "last.pt").stat().st_size
    log_size = (whole / "steps.jsonl").stat().st_size
    assert log_size > checkpoint_size + 2000, "the log must be the file that hits the limit"

    line = one_error(run("train", *settings, "--run-dir", directory, limit=checkpoint_size + 1000))
    fix = EFBIG_FIX.format(note="", dir=directory)
    assert line == (
        f"error: cannot write {directory / 'steps.jsonl'}: {fix} and resume with: "
        f"charlstm train --resume {directory}"
    )
    data = (directory / "steps.jsonl").read_bytes()
    assert data.endswith(b"\n")  # cut back to the last whole line
    rows = [json.loads(raw) for raw in data.splitlines()]
    saved = ckpt.load(directory / "last.pt")
    assert saved.epoch == 1 and [r["step"] for r in rows] == list(range(1, saved.step + 1))
    assert not temporary_files(directory)

    done = run("train", "--resume", directory)
    assert done.returncode == 0, done.stderr
    assert runs.read_steps(directory) == runs.read_steps(whole)
    assert [r["epoch"] for r in runs.read_metrics(directory)] == [1, 2]


def test_a_full_disk_while_preparing_names_the_file_written_and_leaves_nothing(tmp_path):
    """``prepare`` streams the corpus into a temporary directory beside ``--out``: the write
    fails, not the corpus; nothing half-written stays, and the next prepare works."""
    alphabet = "春眠不觉晓处闻啼鸟夜来风雨声花落知多少\n"
    text = "".join(random.Random(5).choices(alphabet, k=300_000))
    corpus, out = tmp_path / "big.txt", tmp_path / "big.prep"
    corpus.write_text(text, encoding="utf-8")  # 900 kB; train.bin alone is 540 kB

    line = one_error(run("prepare", corpus, "--out", out, limit=200_000))
    fix = EFBIG_FIX.format(note="", dir=out)
    assert line == f"error: cannot write {out / 'train.bin'}: {fix} and run the command again"
    assert sorted(tmp_path.iterdir()) == [corpus]  # no --out, no temporary directory

    done = run("prepare", corpus, "--out", out)
    assert done.returncode == 0, done.stderr
    prepared = PreparedCorpus.open(out)
    assert prepared.text() == text and prepared.sha256 == Corpus.from_text(text).fingerprint()

    before = files_of(out)  # a failed prepare over a prepared corpus keeps it
    assert one_error(run("prepare", corpus, "--out", out, limit=200_000)) == line
    assert sorted(tmp_path.iterdir()) == [out, corpus] and files_of(out) == before


def test_generate_out_convert_and_plot_on_a_full_disk_keep_the_old_file(reference, tmp_path):
    out = tmp_path / "samples.txt"
    out.write_text("old samples\n", encoding="utf-8")
    generate = ["generate", "--checkpoint", reference, "--prefix", "我", "--length", "2000"]
    line = one_error(run(*generate, "--out", out, limit=1000))
    fix = EFBIG_FIX.format(note=" (the previous samples.txt is kept)", dir=tmp_path)
    assert line == f"error: cannot write {out}: {fix} and run the command again"
    assert out.read_text(encoding="utf-8") == "old samples\n"

    converted = reference / "best-torch.pt"  # in the run directory, but not its checkpoint
    line = one_error(run("convert", reference, "--to", "torch", "--out", converted, limit=5000))
    fix = EFBIG_FIX.format(note="", dir=reference)
    assert line == f"error: cannot write checkpoint {converted}: {fix} and run the command again"
    assert not converted.exists() and not temporary_files(reference)

    pytest.importorskip("matplotlib")
    # matplotlib builds its font cache on first use; build it here, before the size limit,
    # so the child's stderr holds charlstm's line and not matplotlib's cache warnings.
    import matplotlib.font_manager  # noqa: F401

    plot = tmp_path / "perplexity.png"
    line = one_error(run("plot", reference, "--out", plot, limit=1000))
    fix = EFBIG_FIX.format(note="", dir=tmp_path)
    assert line == f"error: cannot write {plot}: {fix} and run the command again"
    assert not plot.exists() and not temporary_files(tmp_path)


def test_damaged_logs_never_give_a_traceback_in_info_or_resume(reference, tmp_path):
    directory = tmp_path / "run"
    shutil.copytree(reference, directory)
    with open(directory / "metrics.jsonl", "ab") as handle:
        handle.write(b'\xff\xfe not text\n42\n[1, 2]\n{"epoch": "x"}\n\n')
        handle.write(b'{"epoch": 3, "step": 60, "train_loss": "abc", "val_loss": [1]}\n')
        handle.write(b'{"epoch": 4, "step": 90, "train_lo')  # torn by a crash
    with open(directory / "steps.jsonl", "ab") as handle:
        handle.write(b'{"step": 7, "epoch": 1}\n{"step": 55, "epo')  # a repeat, a torn tail

    shown = invoke("info", directory)
    assert shown.exit_code == 0, shown.output
    assert "Traceback" not in shown.output and "held-out" in shown.output

    resumed = invoke("train", "--resume", directory, "--epochs", "3")
    assert resumed.exit_code == 0, resumed.output
    metrics = [json.loads(raw) for raw in (directory / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in metrics] == [1, 2, 3]
    steps = [json.loads(raw) for raw in (directory / "steps.jsonl").read_text().splitlines()]
    assert [r["step"] for r in steps] == list(range(1, 3 * 27 + 1))  # each step once
    assert steps[:STEPS] == runs.read_steps(reference)


@pytest.mark.parametrize(
    ("code", "says"),
    [
        (errno.ENOSPC, "No space left on device; free space on the disk holding {dir} and "),
        (errno.EFBIG, "File too large; free space on the disk holding {dir} (or raise the "
                      "file-size limit, ulimit -f) and "),
        (errno.EROFS, "Read-only file system; make the disk holding {dir} writable (it is "
                      "mounted read-only) and "),
        (errno.EIO, "Input/output error; check the disk holding {dir} (it reported an I/O "
                    "error) and "),
    ],
)  # fmt: skip
def test_each_disk_fault_names_the_file_and_what_to_do(tmp_path, code, says):
    """The one line for each cause the kernel gives (the EFBIG case is real above)."""
    (tmp_path / "last.pt").write_bytes(b"a checkpoint")
    failure = OSError(code, os.strerror(code))
    error = safe_io.write_failed(tmp_path / "steps.jsonl", failure, runs.then_for(tmp_path))
    assert isinstance(error, WriteFailed) and error.exit_code == 1
    assert str(error) == (
        f"cannot write {tmp_path / 'steps.jsonl'}: {says.format(dir=tmp_path)}"
        f"resume with: charlstm train --resume {tmp_path}"
    )


# -- kill -9 at any moment -----------------------------------------------------------------

# ``python -m charlstm`` that SIGKILLs itself at the argv[2]-th occurrence of event argv[1].
KILLER = """
import io, os, runpy, signal, sys
import torch
from charlstm.storage import safe_io
from charlstm.training.loop import Trainer

event, nth, count = sys.argv[1], int(sys.argv[2]), [0]

def due():
    count[0] += 1
    return count[0] == nth

def die():
    os.kill(os.getpid(), signal.SIGKILL)

real_step, real_save, real_replace = Trainer.train_step, torch.save, os.replace
real_append = safe_io.append_lines

def step(self, *args, **kwargs):  # "step": before an optimizer step
    if event == "step" and due():
        die()
    return real_step(self, *args, **kwargs)

def save(obj, handle, *args, **kwargs):  # "save": half-way through writing a checkpoint
    if event == "save" and due():
        buffer = io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        handle.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        handle.flush()
        die()
    return real_save(obj, handle, *args, **kwargs)

def replace(source, target, *args, **kwargs):
    name = str(target)
    if event == "rename" and name.endswith(".pt") and due():  # whole, not yet in place
        die()
    if event == "run-files" and name.endswith((".json", ".jsonl")) and due():
        die()  # config.json, vocab.json or (resuming) the rewound logs: not yet in place
    real_replace(source, target, *args, **kwargs)
    if event == "renamed" and name.endswith(".pt") and due():  # just in place
        die()

def append(path, lines, then):  # "torn-log": half a batch of log lines reaches the disk
    if event == "torn-log" and due():
        data = "".join(lines).encode("utf-8")
        with open(path, "ab") as handle:
            handle.write(data[: len(data) // 2 + 1])
        die()
    return real_append(path, lines, then)

Trainer.train_step, torch.save, os.replace, safe_io.append_lines = step, save, replace, append
sys.argv = ["charlstm", *sys.argv[3:]]
runpy.run_module("charlstm", run_name="__main__", alter_sys=True)
"""

#: Each kill's event and how many occurrences of it it lets pass first (at most).
EVENTS = {"step": 6, "save": 5, "rename": 5, "renamed": 5, "torn-log": 4, "run-files": 2}


@pytest.mark.slow
def test_kill_9_at_random_moments_then_resume_equals_one_uninterrupted_run(
    reference, small_corpus, tmp_path
):
    directory = tmp_path / "run"
    fresh = ["train", small_corpus, *TINY, "--epochs", EPOCHS, "--run-dir", directory]
    generator = random.Random(19)
    kills = [("save", 1)]  # the very first save, before any checkpoint exists
    kills += [(e, generator.randint(1, EVENTS[e])) for e in generator.choices(list(EVENTS), k=7)]
    kills.insert(2, ("run-files", 1))  # a resume rewriting the logs (a checkpoint exists)
    for event, nth in kills:
        if (directory / "last.pt").exists():
            command = ["train", "--resume", directory]
        else:
            command = [*fresh, "--overwrite"] if directory.exists() else fresh
        killed = subprocess.run(
            [sys.executable, "-c", KILLER, event, str(nth), *map(str, command)],
            capture_output=True, text=True, env=ENV, timeout=300, check=False,
        )  # fmt: skip
        assert killed.returncode == -signal.SIGKILL, (event, nth, killed.stderr)
        if (directory / "last.pt").exists():
            ckpt.load(directory / "last.pt")  # whole after every kill
        elif (event, nth) == kills[0]:  # killed in the first save: resume says what to do
            message = one_error(run("train", "--resume", directory), code=2)
            assert message.endswith("start it again with the same command and --overwrite")

    assert 0 < ckpt.load(directory / "last.pt").step < STEPS, "the kills came too late"
    done = run("train", "--resume", directory)
    assert done.returncode == 0, done.stderr
    assert runs.read_steps(directory) == runs.read_steps(reference)  # none missing or doubled
    assert same_weights(directory / "last.pt", reference / "last.pt")
    assert not temporary_files(directory)
    print("killed at", ", ".join(f"{event} #{nth}" for event, nth in kills))
