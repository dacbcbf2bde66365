"""Bad input, the whole surface: every mistake is one line, a non-zero exit and no damage.

The one table of bad command lines, for every command, each run twice: through typer's
``CliRunner`` and as a real ``python -m charlstm`` process. Each must exit non-zero with
exactly one line on stderr
(``error: ...``, naming the problem), print no traceback, and leave every file as it was,
in particular the run directory that already exists (hashed before and after), without
creating any (no half-made run directory for a refused command).

The real processes share one interpreter start: a runner process imports torch and
charlstm once, then forks one child per case; the child points its stdout/stderr (file
descriptors 1 and 2) at files, sets ``sys.argv`` and runs the ``charlstm`` package as
``__main__`` exactly as ``python -m charlstm`` does; its exit status is the case's.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from charlstm.cli.app import app
from tests.helpers import REPO_ROOT, copy_run

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
NOT_ROOT = pytest.mark.skipif(
    hasattr(os, "geteuid") and os.geteuid() == 0,
    reason="root writes into read-only directories; the file-as-parent case covers it",
)

#: Valid options that keep a train command tiny in case a check failed to stop it.
TINY = ["--epochs", "1", "--hidden", "8", "--batch-size", "2", "--num-steps", "5"]
NEW = ["--run-dir", "{tmp}/new", "--sample-every", "0"]
GEN = ["generate", "--checkpoint", "{run}", "--length", "5"]


def case(name: str, args: list[str], message: str, *marks: pytest.MarkDecorator):
    return pytest.param(args, message, id=name, marks=marks)


T, C, R = "{tmp}", "{corpus}", "{run}"
# fmt: off
CASES = [
    # -- the corpus ------------------------------------------------------------------------
    case("missing-corpus", ["train", f"{T}/missing.zip", *TINY, *NEW], "corpus not found"),
    case("directory-as-corpus", ["train", f"{T}/emptydir", *TINY, *NEW], "is a directory"),
    case("zip-without-text", ["train", f"{T}/notext.zip", *TINY, *NEW], "no text member"),
    case("binary-file", ["train", f"{T}/binary.txt", *TINY, *NEW], "looks like a binary file"),
    case("undecodable-text", ["train", f"{T}/latin.txt", *TINY, *NEW], "cannot decode"),
    case("empty-file", ["train", f"{T}/empty.txt", *TINY, *NEW], "is empty"),
    case("shorter-than-a-batch", ["train", f"{T}/short.txt", "--epochs", "1", *NEW], "too short"),
    case("missing-zip-member", ["train", C, "--member", "x.txt", *TINY, *NEW], "no member"),
    case("unknown-encoding", ["train", C, "--encoding", "klingon", *TINY, *NEW], "encoding"),
    # -- training settings -----------------------------------------------------------------
    case("batch-size-0", ["train", C, *TINY, "--batch-size", "0", *NEW],
         "--batch-size must be positive"),
    case("batch-beyond-the-corpus", ["train", C, "--epochs", "1", "--batch-size", "64",
                                     "--num-steps", "200", *NEW], "too short"),
    case("negative-lr", ["train", C, *TINY, "--lr", "-0.1", *NEW], "--lr must be positive"),
    case("num-steps-0", ["train", C, *TINY, "--num-steps", "0", *NEW], "--num-steps"),
    case("epochs-0", ["train", C, *TINY, "--epochs", "0", *NEW], "--epochs must be"),
    case("dropout-1.5", ["train", C, *TINY, "--dropout", "1.5", *NEW], "--dropout"),
    case("val-fraction-1", ["train", C, *TINY, "--val-fraction", "1", *NEW], "--val-fraction"),
    case("unknown-backend", ["train", C, *TINY, "--backend", "keras", *NEW],
         "unknown --backend 'keras'"),
    case("scratch-impl-with-torch", ["train", C, *TINY, "--backend", "torch", "--scratch-impl",
                                     "autograd", *NEW], "--scratch-impl needs --backend scratch"),
    case("peephole-with-torch", ["train", C, *TINY, "--backend", "torch", "--peephole", *NEW],
         "--peephole needs --backend scratch"),
    case("unknown-optimizer", ["train", C, *TINY, "--optimizer", "rms", *NEW], "'rms'"),
    case("unknown-preset", ["train", C, *TINY, "--preset", "huge", *NEW], "'huge'"),
    case("teacher-order-1", ["train", C, *TINY, "--ngram-teacher", "1", *NEW], "from 2 to 16"),
    case("teacher-weight-0", ["train", C, *TINY, "--teacher-weight", "0", *NEW], "(0, 1]"),
    case("ema-1", ["train", C, *TINY, "--ema", "1", *NEW], "--ema must be a decay in [0, 1)"),
    case("unknown-device", ["train", C, *TINY, "--device", "tpu", *NEW], "--device"),
    case("cuda-without-gpu", ["train", C, *TINY, "--device", "cuda", *NEW], "CUDA", NO_CUDA),
    case("prefix-outside-corpus", ["train", C, *TINY, "--prefix", "xyz", *NEW], "'x' 'y' 'z'"),
    case("empty-training-prefix", ["train", C, *TINY, "--prefix=", *NEW], "--prefix is empty"),
    case("absurd-size", ["train", C, *TINY, "--embedding-size", "2000000000", *NEW],
         "out of memory; try a smaller --batch-size or --hidden"),  # a 400-gigabyte embedding
    case("overflowing-size", ["train", C, *TINY, "--hidden", "1" + "0" * 20, *NEW],
         "--hidden must be at most 2,147,483,647"),
    case("nan-lr", ["train", C, *TINY, "--lr", "nan", *NEW], "--lr must be a finite number"),
    case("nan-clip", ["train", C, *TINY, "--clip", "nan", *NEW], "--clip must be a finite"),
    case("nan-time-limit", ["train", C, *TINY, "--time-limit", "nan", *NEW], "--time-limit must"),
    case("inf-weight-decay", ["train", C, *TINY, "--weight-decay", "inf", *NEW],
         "--weight-decay must be a finite number"),
    case("seed-beyond-64-bits", ["train", C, *TINY, "--seed", str(2**64), *NEW],
         "--seed must be in [0, 2**63 - 1]"),
    case("teacher-order-huge", ["train", C, *TINY, "--ngram-teacher", "10" + "0" * 18, *NEW],
         "order from 2 to 16"),
    # -- the run directory -----------------------------------------------------------------
    case("run-dir-under-a-file", ["train", C, *TINY, "--run-dir", f"{T}/afile/run"],
         "cannot write to run directory"),
    case("run-dir-read-only", ["train", C, *TINY, "--run-dir", f"{T}/readonly/run"],
         "cannot write to run directory", NOT_ROOT),
    case("existing-run-without-resume", ["train", C, *TINY, "--run-dir", R],
         "already holds a run"),
    case("resume-dir-without-checkpoint", ["train", "--resume", f"{T}/emptydir"],
         "no checkpoint"),
    case("resume-missing-path", ["train", "--resume", f"{T}/nothing"], "not found"),
    case("resume-different-hidden", ["train", "--resume", R, "--epochs", "3", "--hidden", "64"],
         "--hidden 64 differs"),
    case("resume-different-batch-size",
         ["train", "--resume", R, "--epochs", "3", "--batch-size", "4"], "--batch-size 4 differs"),
    case("resume-negative-lr", ["train", "--resume", R, "--epochs", "3", "--lr", "-1"],
         "--lr must be positive"),
    case("resume-cuda-without-gpu", ["train", "--resume", R, "--epochs", "3", "--device", "cuda"],
         "CUDA", NO_CUDA),
    case("resume-prefix-outside-corpus", ["train", "--resume", R, "--epochs", "3", "--prefix", "q"],
         "not in the corpus's vocabulary"),
    case("resume-with-preset", ["train", "--resume", R, "--preset", "small-corpus"], "--preset"),
    case("resume-and-init-from", ["train", C, "--resume", R, "--init-from", R],
         "exclude each other"),
    case("resume-malicious-checkpoint", ["train", "--resume", f"{T}/evil.pt"],
         "refusing to load"),
    case("init-from-new-characters", ["train", f"{T}/english.txt", "--init-from", R, *TINY, *NEW],
         "not in the checkpoint's vocabulary"),
    case("init-from-random-bytes", ["train", C, "--init-from", f"{T}/random.pt", *TINY, *NEW],
         "not a readable charlstm checkpoint"),
    # -- generate --------------------------------------------------------------------------
    case("temperature-0", [*GEN, "--prefix", "分", "--temperature", "0"],
         "--temperature must be positive"),
    case("temperature-negative", [*GEN, "--prefix", "分", "--temperature", "-1"], "--temperature"),
    case("length-negative", [*GEN, "--prefix", "分", "--length", "-1"], "--length"),
    case("length-overflowing", [*GEN, "--prefix", "分", "--length", "1" + "0" * 19],
         "--length must be at most"),
    case("num-samples-overflowing", [*GEN, "--prefix", "分", "--num-samples", "9" * 13],
         "--num-samples must be at most"),
    case("generate-seed-beyond-64-bits", [*GEN, "--prefix", "分", "--seed", str(2**64)],
         "--seed must be in [0, 2**63 - 1]"),
    case("top-k-above-vocabulary", [*GEN, "--prefix", "分", "--top-k", "5000"], "vocabulary"),
    case("prefix-outside-vocabulary", [*GEN, "--prefix", "分xy"],
         "not in the model's vocabulary: 'x' 'y'"),
    case("empty-prefix", [*GEN, "--prefix", ""], "prefix is empty"),
    case("generate-cuda-without-gpu", [*GEN, "--prefix", "分", "--device", "cuda"], "CUDA",
         NO_CUDA),
    case("generate-missing-checkpoint", ["generate", "--checkpoint", f"{T}/nothing.pt",
         "--prefix", "分"], "not found"),
    case("generate-malicious-checkpoint", ["generate", "--checkpoint", f"{T}/evil.pt",
         "--prefix", "分"], "refusing to load"),
    case("generate-cache-mix-2", [*GEN, "--prefix", "分", "--cache", "--cache-mix", "2"],
         "--cache-mix must be in [0, 1), not 2.0"),
    case("generate-dynamic-segment-0", [*GEN, "--prefix", "分", "--dynamic",
         "--dynamic-segment", "0"], "--dynamic-segment must be positive"),
    case("generate-cache-setting-alone", [*GEN, "--prefix", "分", "--cache-window", "10"],
         "--cache-window is a setting of --cache; add --cache"),
    case("cache-mix-alone", [*GEN, "--prefix", "分", "--cache-mix", "0.2"],
         "--cache-mix is a setting of --cache; add --cache"),
    case("cache-window-0", [*GEN, "--prefix", "分", "--cache", "--cache-window", "0"],
         "--cache-window must be positive, not 0"),
    case("cache-flatness-negative", [*GEN, "--prefix", "分", "--cache", "--cache-flatness",
         "-1"], "--cache-flatness must be positive"),
    case("generate-dynamic-lr-negative", [*GEN, "--prefix", "分", "--dynamic", "--dynamic-lr",
         "-1"], "--dynamic-lr must be >= 0, not -1.0"),
    case("dynamic-segment-alone", [*GEN, "--prefix", "分", "--dynamic-segment", "5"],
         "--dynamic-segment is a setting of --dynamic; add --dynamic"),
    case("top-p-0", [*GEN, "--prefix", "分", "--top-p", "0"], "--top-p must be in (0, 1], not 0.0"),
    case("top-p-1.5", [*GEN, "--prefix", "分", "--top-p", "1.5"],
         "--top-p must be in (0, 1], not 1.5"),
    case("repetition-penalty-below-1", [*GEN, "--prefix", "分", "--repetition-penalty", "0.8"],
         "--repetition-penalty must be at least 1"),
    case("penalty-window-0", [*GEN, "--prefix", "分", "--repetition-penalty", "2",
         "--penalty-window", "0"], "--penalty-window must be positive"),
    case("lines-0", [*GEN, "--prefix", "分", "--lines", "0"], "--lines must be positive"),
    case("stop-at-two-characters", [*GEN, "--prefix", "分", "--stop-at", "ab"],
         "--stop-at takes one character"),
    case("stop-at-outside-vocabulary", [*GEN, "--prefix", "分", "--stop-at", "x"],
         "--stop-at 'x' is not in the model's vocabulary"),
    case("unknown-format", [*GEN, "--prefix", "分", "--format", "xml"],
         "unknown --format 'xml'; choose text or jsonl"),
    case("num-samples-0", [*GEN, "--prefix", "分", "--num-samples", "0"],
         "--num-samples must be positive"),
    case("prefix-file-missing", [*GEN, "--prefix-file", f"{T}/missing.txt"],
         "prefix file not found"),
    case("prefix-file-without-prefixes", [*GEN, "--prefix-file", f"{T}/empty.txt"],
         "has no prefixes"),
    case("out-in-a-missing-directory", [*GEN, "--prefix", "分", "--out", f"{T}/no/such/out.txt"],
         f"cannot write {T}/no/such/out.txt"),
    # -- eval and convert ------------------------------------------------------------------
    case("eval-missing-corpus", ["eval", f"{T}/missing.txt", "--checkpoint", R],
         "corpus not found"),
    case("eval-one-character", ["eval", f"{T}/one.txt", "--checkpoint", R], "too short"),
    case("eval-corpus-as-checkpoint", ["eval", C, "--checkpoint", C],
         f"not a readable charlstm checkpoint: {C} is a zip archive without PyTorch data"),
    case("eval-new-characters", ["eval", f"{T}/english.txt", "--checkpoint", R],
         "not in the model's vocabulary"),
    case("eval-truncated-checkpoint", ["eval", C, "--checkpoint", f"{T}/truncated.pt"],
         "not a readable charlstm checkpoint"),
    case("eval-cache-mix-2", ["eval", C, "--checkpoint", R, "--cache", "--cache-mix", "2"],
         "--cache-mix must be in [0, 1), not 2.0"),
    case("eval-dynamic-lr-negative", ["eval", C, "--checkpoint", R, "--dynamic",
         "--dynamic-lr", "-1"], "--dynamic-lr must be >= 0"),
    case("eval-negative-val-fraction", ["eval", C, "--checkpoint", R, "--val-fraction", "-0.5"],
         "--val-fraction must be in [0, 1)"),
    case("eval-nan-val-fraction", ["eval", C, "--checkpoint", R, "--val-fraction", "nan"],
         "--val-fraction must be in [0, 1)"),
    case("eval-dynamic-setting-alone", ["eval", C, "--checkpoint", R, "--dynamic-lr", "0.3"],
         "--dynamic-lr is a setting of --dynamic; add --dynamic"),
    case("convert-unknown-backend", ["convert", R, "--to", "keras", "--out", f"{T}/x.pt"],
         "unknown --to"),
    case("convert-onto-its-source", ["convert", R, "--to", "torch", "--out", f"{R}/best.pt"],
         "--out must differ"),
    case("convert-onto-another-file", ["convert", R, "--to", "torch", "--out", f"{R}/last.pt"],
         "exists; convert writes a new file"),
    case("plot-out-text-file", ["plot", R, "--out", f"{T}/curves.txt"],
         "name a .png, .pdf, .svg file"),
    case("prefix-file-directory", [*GEN, "--prefix-file", f"{T}/emptydir"],
         "prefix file is a directory"),
    case("teacher-weight-without-teacher", ["train", C, *TINY, "--teacher-weight", "0.9", *NEW],
         "--teacher-weight is a setting of --ngram-teacher"),
    case("extend-vocab-without-init-from", ["train", C, *TINY, "--extend-vocab", *NEW],
         "--extend-vocab is a setting of --init-from"),
    case("mix-weight-without-ngram-mix", ["train", C, *TINY, "--mix-weight", "0.3", *NEW],
         "--mix-weight is a setting of --ngram-mix"),
    case("ngram-mix-order-1", ["train", C, *TINY, "--ngram-mix", "1", *NEW], "from 2 to 16"),
    case("mix-weight-1", ["train", C, *TINY, "--ngram-mix", "3", "--mix-weight", "1", *NEW],
         "--mix-weight must be in (0, 1)"),
    case("teacher-folds-beyond-the-text", ["train", C, *TINY, "--ngram-teacher", "3",
                                           "--teacher-folds", "100000", *NEW], "--teacher-folds"),
    case("patience-without-held-out", ["train", C, *TINY, "--val-fraction", "0", "--patience",
                                       "2", *NEW], "--val-fraction 0 leaves no held-out part"),
    case("plateau-without-held-out", ["train", C, *TINY, "--val-fraction", "0", "--schedule",
                                      "plateau", *NEW], "--schedule plateau follows"),
    case("overwrite-on-an-in-place-resume", ["train", "--resume", R, "--epochs", "3",
                                             "--overwrite"], "--overwrite has nothing to replace"),
    case("greedy-with-temperature", [*GEN, "--prefix", "分", "--greedy", "--temperature", "0.5"],
         "--greedy always takes the likeliest"),
    case("greedy-with-top-p", [*GEN, "--prefix", "分", "--greedy", "--top-p", "0.9"],
         "--greedy always takes the likeliest"),
    case("penalty-window-without-penalty", [*GEN, "--prefix", "分", "--penalty-window", "8"],
         "--penalty-window is a setting of --repetition-penalty"),
]
# fmt: on


def snapshot(root: Path) -> dict[str, str]:
    """Every path under ``root``: a file's SHA-256, or ``dir`` for a directory."""
    out = {}
    for path in sorted(root.rglob("*")):
        key = str(path.relative_to(root))
        out[key] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
    return out


@pytest.fixture(scope="module")
def world(
    small_corpus: Path, tiny_run: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """A workspace with bad inputs of every kind and one existing run, ``run/``."""
    tmp = tmp_path_factory.mktemp("bad-input")
    (tmp / "emptydir").mkdir()
    with zipfile.ZipFile(tmp / "notext.zip", "w") as archive:
        archive.writestr("cover.png", b"\x89PNG\r\n\x1a\n")
    (tmp / "binary.txt").write_bytes(b"\x7fELF\x02\x01\x01\x00\x00\x00" * 50)
    (tmp / "latin.txt").write_bytes(b"\xff\xfe caf\xe9 " * 50)  # neither UTF-8 nor GB18030
    (tmp / "empty.txt").write_bytes(b"")
    (tmp / "one.txt").write_text("分", encoding="utf-8")
    (tmp / "short.txt").write_text("我们说好不分开\n" * 3, encoding="utf-8")
    (tmp / "english.txt").write_text("hello, world\n" * 100, encoding="utf-8")
    (tmp / "afile").write_text("a file, not a directory\n")
    (tmp / "readonly").mkdir()
    (tmp / "random.pt").write_bytes(os.urandom(4096))
    torch.save({"format_version": 1, "model": Payload(str(tmp / "MARKER"))}, tmp / "evil.pt")
    run = copy_run(tiny_run, tmp / "run")
    whole = (run / "last.pt").read_bytes()
    (tmp / "truncated.pt").write_bytes(whole[: len(whole) // 2])
    (tmp / "readonly").chmod(0o555)
    yield {"tmp": tmp, "run": run, "corpus": small_corpus}
    (tmp / "readonly").chmod(0o755)


class Payload:
    """Unpickling this would create a marker file (it must never happen)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def argv(args: list[str], world: dict[str, Path]) -> list[str]:
    return [a.format(**{k: str(v) for k, v in world.items()}) for a in args]


RUNNER = r"""
import hashlib, json, os, runpy, sys, tempfile, traceback
from pathlib import Path
import contextlib, io
import torch, charlstm.cli.app, charlstm.training.start, charlstm.api, charlstm.storage.convert

SNAPSHOT

cases, root = json.load(sys.stdin), Path(sys.argv[1])
# Warm up once (imports, typer's command tree); every case then runs in a fresh fork.
sys.argv = ["charlstm", "train", "--help"]
with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
    runpy.run_module("charlstm", run_name="__main__", alter_sys=True)

results = {}
for name, args in cases.items():
    out, err = tempfile.TemporaryFile(), tempfile.TemporaryFile()
    sys.stdout.flush(); sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        os.dup2(out.fileno(), 1); os.dup2(err.fileno(), 2)
        sys.argv = ["charlstm", *args]
        code = 0
        try:
            runpy.run_module("charlstm", run_name="__main__", alter_sys=True)
        except SystemExit as exit:
            if isinstance(exit.code, str):
                print(exit.code, file=sys.stderr)
            code = exit.code if isinstance(exit.code, int) else int(exit.code is not None)
        except BaseException:
            traceback.print_exc()  # what the interpreter would print on its way out
            code = 1
        sys.stdout.flush(); sys.stderr.flush()
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    out.seek(0); err.seek(0)
    results[name] = {
        "code": os.waitstatus_to_exitcode(status),
        "stdout": out.read().decode("utf-8", "replace"),
        "stderr": err.read().decode("utf-8", "replace"),
        "after": snapshot(root),
    }
json.dump(results, sys.stdout)
"""


@pytest.fixture(scope="module")
def real_processes(world: dict[str, Path]) -> dict[str, dict]:
    """Every case of the table run as ``python -m charlstm`` (one fork each)."""
    cases = {}
    for param in CASES:
        if any(m.name == "skipif" and m.args[0] for m in param.marks):
            continue
        cases[param.id] = argv(param.values[0], world)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    before = snapshot(world["tmp"])
    if not hasattr(os, "fork"):  # one interpreter per case: slower, the same checks
        results = {}
        for name, args in cases.items():
            done = subprocess.run(
                [sys.executable, "-m", "charlstm", *args],
                capture_output=True,
                text=True,
                cwd=world["tmp"],
                env=env,
                timeout=120,
                check=False,
            )
            results[name] = {"code": done.returncode, "stdout": done.stdout}
            results[name].update(stderr=done.stderr, after=snapshot(world["tmp"]), before=before)
        return results
    done = subprocess.run(
        [sys.executable, "-c", RUNNER.replace("SNAPSHOT", inspect.getsource(snapshot))]
        + [str(world["tmp"])],
        input=json.dumps(cases),
        capture_output=True,
        text=True,
        cwd=world["tmp"],
        env=env,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout)
    for result in results.values():
        result["before"] = before
    return results


def check(code: int, stdout: str, stderr: str, message: str) -> None:
    assert code != 0, f"exit code 0; output: {stdout}{stderr}"
    assert "Traceback" not in stderr + stdout
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got: {stderr!r}"
    assert lines[0].startswith("error: ") and message in lines[0], lines[0]
    assert stdout == "", f"nothing on stdout for a refused command, got: {stdout!r}"


@pytest.mark.parametrize(("args", "message"), CASES)
def test_bad_invocation_is_one_line_non_zero_and_harmless(
    args, message, world, real_processes, request, monkeypatch
):
    name = request.node.callspec.id
    monkeypatch.chdir(world["tmp"])  # a stray default runs/ directory would show up here
    before = snapshot(world["tmp"])

    result = CliRunner().invoke(app, argv(args, world))
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    message = argv([message], world)[0]
    check(result.exit_code, result.stdout, result.stderr, message)
    assert snapshot(world["tmp"]) == before

    process = real_processes[name]
    check(process["code"], process["stdout"], process["stderr"], message)
    assert process["after"] == process["before"]
    assert process["stderr"] == result.stderr  # the same line either way
    assert not (world["tmp"] / "MARKER").exists()
