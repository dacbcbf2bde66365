"""Training throughput on 1 and 2 processes (torchrun, gloo) on the CPU.

Each configuration is a real ``charlstm train`` command with the same global batch for the
same number of optimizer steps; the figure is training characters per second as the run's
``metrics.jsonl`` records it (training time only: start-up, scoring and checkpoints are
left out). The reference is one process with one thread, measured in the same run:

    1 process  x 1 thread      python -m charlstm train ...            (the reference)
    1 process  x W threads     OMP_NUM_THREADS=W python -m charlstm train ...
    W processes x 1 thread     torchrun --standalone --nproc_per_node=W -m charlstm train ...

On a machine with W cores the last two use the same cores; data parallelism pays only when
the all-reduce of the gradients costs less than the compute it splits.

    python scripts/bench_ddp.py                       # 1x256 scratch, batch 32 x 35, 40 steps
    python scripts/bench_ddp.py --hidden 512 --batch-size 64
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
JAYCHOU = ROOT.parent / "shared" / "data" / "jaychou_lyrics.txt.zip"


def train(corpus: Path, run_dir: Path, processes: int, threads: int, args: argparse.Namespace):
    """Run one training command; return its training characters per second."""
    settings = [
        "train", str(corpus), "--hidden", str(args.hidden), "--batch-size", str(args.batch_size),
        "--num-steps", str(args.num_steps), "--max-steps", str(args.steps),
        "--eval-every", str(args.steps), "--eval-chars", "2000", "--sample-every", "0",
        "--backend", args.backend, "--device", "cpu", "--run-dir", str(run_dir),
    ]  # fmt: skip
    launcher = [sys.executable, "-m", "charlstm"]
    if processes > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                    f"--nproc_per_node={processes}", "-m", "charlstm"]  # fmt: skip
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    done = subprocess.run(
        [*launcher, *settings], capture_output=True, text=True, env=env, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(launcher)} failed:\n{done.stderr[-2000:]}")
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return rows[-1]["chars_per_sec"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_ddp.py", description=__doc__.split("\n")[0])
    parser.add_argument("--corpus", type=Path, default=JAYCHOU)
    parser.add_argument("--backend", default="scratch")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32, help="global batch")
    parser.add_argument("--num-steps", type=int, default=35)
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps per run")
    parser.add_argument("--processes", type=int, default=2)
    args = parser.parse_args(argv)
    if not args.corpus.is_file():
        raise SystemExit(f"corpus not found: {args.corpus}")
    width = args.processes
    runs = [(1, 1), (1, width), (width, 1)]  # (processes, threads per process)
    print(
        f"{args.backend} 1x{args.hidden}, global batch {args.batch_size} x {args.num_steps}, "
        f"{args.steps} steps, {os.cpu_count()} CPU cores here"
    )
    with tempfile.TemporaryDirectory(prefix="charlstm-ddp-") as tmp:
        reference = None
        for processes, threads in runs:
            run_dir = Path(tmp) / f"p{processes}-t{threads}"
            speed = train(args.corpus, run_dir, processes, threads, args)
            reference = reference or speed
            print(
                f"{processes} process(es) x {threads} thread(s): {speed:9,.0f} chars/s  "
                f"{speed / reference:5.2f}x"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
