"""Prepare a large synthetic corpus, train from it, and report memory and times.

The corpus is tang_poems repeated to ``--size-mb`` MB of UTF-8 in a temporary directory
(deleted afterwards, never committed). Both commands run as child processes, each measured
on its own (peak resident memory from ``wait4``'s ``ru_maxrss``):

1. ``prepare``: its peak memory and MB/s;
2. ``charlstm train PREPARED --preset large-corpus`` (a 1x512 LSTM; its ``--softmax auto``
   is the adaptive softmax for tang_poems' 9,700 characters) for ``--steps`` steps, stdout
   a pipe with a progress line after every step: its peak memory, the time from launch to
   its set-up line (``run ...``: the model built, the data opened; the first step comes
   next, after the step-0 checkpoint) and to the end of its first two steps; the first
   began about one step's time (the second's) before it ended.

    python scripts/bench_scale.py                 # ~1 GB; targets: prepare <= 1.5 GB RSS and
                                                  # >= 20 MB/s; train <= 1.5 GB, first step
                                                  # within 10 s of launch
    python scripts/bench_scale.py --size-mb 100   # quick
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TANG = ROOT.parent / "shared" / "data" / "tang_poems.txt.zip"
LIMIT_MB = 1536

CHILD = """
import sys
from charlstm.config import DataConfig
from charlstm.data.prepared import prepare
prepare(DataConfig(path=sys.argv[1]), 0.1, sys.argv[2])
"""


def synthesise(path: Path, size_mb: int) -> int:
    """Write tang_poems repeated to about ``size_mb`` MB; return the size in bytes."""
    sys.path.insert(0, str(ROOT))
    from charlstm.data.corpus import read_text

    block = read_text(TANG).encode("utf-8")
    target = size_mb * 1_000_000
    with open(path, "wb") as out:
        written = 0
        while written < target:
            piece = block[: target - written] if target - written < len(block) else block
            piece = piece.decode("utf-8", "ignore").encode("utf-8")  # whole characters only
            if not piece:
                break  # less than one character short of the target
            out.write(piece)
            written += len(piece)
    return written


def environment() -> dict[str, str]:
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return {
        **os.environ,
        "PYTHONPATH": path,
        "PYTHONUNBUFFERED": "1",
        "CHARLSTM_PROGRESS_EVERY": "0",  # a progress line after every step
    }


def run(command: list[str]) -> tuple[list[tuple[float, str]], float, float]:
    """Run ``command``; its stdout lines with their seconds since launch, its wall time and
    its own peak resident memory in MB."""
    start = time.perf_counter()
    child = subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.PIPE, text=True, env=environment()
    )
    assert child.stdout is not None
    lines = [(time.perf_counter() - start, line.rstrip("\n")) for line in child.stdout]
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - start
    if child.returncode:
        print("\n".join(line for _, line in lines))
        raise SystemExit(f"{command[2:4]} failed with exit code {child.returncode}")
    return lines, seconds, usage.ru_maxrss / 1024  # kB on Linux


def first(lines: list[tuple[float, str]], prefix: str) -> float:
    return next(at for at, line in lines if line.startswith(prefix))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_scale.py", description=__doc__.split("\n")[0])
    parser.add_argument("--size-mb", type=int, default=1000, help="corpus size (default 1000)")
    parser.add_argument("--steps", type=int, default=3, help="training steps (default 3)")
    args = parser.parse_args(argv)
    if args.steps < 2:
        parser.error("--steps must be at least 2 (the second step times the first)")
    with tempfile.TemporaryDirectory(prefix="charlstm-scale-") as tmp:
        source, out = Path(tmp) / "big.txt", Path(tmp) / "prepared"
        size = synthesise(source, args.size_mb)
        print(f"corpus: {size / 1e6:,.0f} MB of UTF-8 (tang_poems repeated)")
        lines, seconds, peak = run([sys.executable, "-c", CHILD, str(source), str(out)])
        print(f"  {lines[0][1]}")
        print(
            f"prepare: {seconds:.1f} s, {size / 1e6 / seconds:.1f} MB/s, peak RSS {peak:,.0f} MB "
            f"(targets: >= 20 MB/s, <= {LIMIT_MB:,} MB)"
        )
        source.unlink()  # the text is no longer needed: free the disk
        train = [
            *(sys.executable, "-m", "charlstm", "train", str(out), "--preset", "large-corpus"),
            *("--max-steps", str(args.steps), "--eval-chars", "2000", "--sample-every", "0"),
            *("--time-limit", "0", "--run-dir", str(Path(tmp) / "run")),
        ]
        lines, seconds, peak = run(train)
        ready = first(lines, "run ")
        done = [first(lines, f"step {step}/{args.steps}") for step in (1, 2)]
        began = done[0] - (done[1] - done[0])  # step 1 took about as long as step 2
        print(f"  {next(line for _, line in lines if line.startswith('run '))}")
        print(
            f"train: set up {ready:.1f} s after launch; step 1 done at {done[0]:.1f} s and "
            f"step 2 at {done[1]:.1f} s, so step 1 began at about {began:.1f} s; "
            f"{args.steps} steps and the end in {seconds:.1f} s; peak RSS {peak:,.0f} MB "
            f"(targets: first step within 10 s of launch, <= {LIMIT_MB:,} MB)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
