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

``--masks`` measures instead what equal-to-one-process dropout costs (issue 28): W processes
x 1 thread, each drawing the masks of the whole global batch and keeping its rows (what
``charlstm train`` does), against the same W processes each drawing only its own rows' masks
from torch's global generator seeded per rank and step (the reference: charlstm before
issue 28, run here by patching ``CharLSTM.seed_masks`` in a wrapper script). The two
alternate, ``--repeat`` times each; then the draws alone are timed in this process at the
step's shapes.

    python scripts/bench_ddp.py --masks --repeat 3
    python scripts/bench_ddp.py --masks --repeat 3 --layers 2 --embed-dropout 0.2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
JAYCHOU = ROOT.parent / "shared" / "data" / "jaychou_lyrics.txt.zip"


#: ``charlstm`` with every rank drawing the masks of its own rows only, from torch's global
#: generator seeded by seed, step and rank: the masks before issue 28, for the reference.
LOCAL_MASKS = """
import os, runpy, sys
import torch
from charlstm.model import CharLSTM

rank = int(os.environ.get("RANK", "0"))

def local(self, seed, rows=None, batch_size=0):
    torch.manual_seed((seed + rank) % 2**64)
    self.masks.generator = None  # dropout's own draws, at the share's shape

CharLSTM.seed_masks = local
sys.argv = ["charlstm", *sys.argv[1:]]
runpy.run_module("charlstm", run_name="__main__", alter_sys=True)
"""


def train(
    corpus: Path,
    run_dir: Path,
    processes: int,
    threads: int,
    args: argparse.Namespace,
    wrapper: Path | None = None,
):
    """Run one training command (through ``wrapper``, a script, when given); return its
    training characters per second."""
    settings = [
        "train", str(corpus), "--hidden", str(args.hidden), "--batch-size", str(args.batch_size),
        "--num-steps", str(args.num_steps), "--max-steps", str(args.steps),
        "--eval-every", str(args.steps), "--eval-chars", "2000", "--sample-every", "0",
        "--backend", args.backend, "--device", "cpu", "--run-dir", str(run_dir),
        "--layers", str(args.num_layers), "--dropout", str(args.dropout),
        "--embed-dropout", str(args.embed_dropout),
    ]  # fmt: skip
    program = ["-m", "charlstm"] if wrapper is None else [str(wrapper)]
    launcher = [sys.executable, *program]
    if processes > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                    f"--nproc_per_node={processes}", *program]  # fmt: skip
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
    parser.add_argument("--layers", dest="num_layers", type=int, default=1)
    parser.add_argument("--dropout", type=float, default=0.3)
    parser.add_argument("--embed-dropout", type=float, default=0.0)
    parser.add_argument("--masks", action="store_true", help="global against per-rank masks")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each (--masks)")
    args = parser.parse_args(argv)
    if not args.corpus.is_file():
        raise SystemExit(f"corpus not found: {args.corpus}")
    if args.masks:
        return compare_masks(args)
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


def compare_masks(args: argparse.Namespace) -> int:
    """W processes x 1 thread: global masks (charlstm's) against per-rank masks."""
    width = args.processes
    print(
        f"{args.backend} {args.num_layers}x{args.hidden}, dropout {args.dropout}, embedding "
        f"dropout {args.embed_dropout}, global batch {args.batch_size} x {args.num_steps}, "
        f"{args.steps} steps, {width} processes x 1 thread, {os.cpu_count()} CPU cores here"
    )
    speeds: dict[str, list[float]] = {
        "per-rank masks, before (ref.)": [],
        "global masks (charlstm now)": [],
    }
    with tempfile.TemporaryDirectory(prefix="charlstm-masks-") as tmp:
        wrapper = Path(tmp) / "local_masks.py"
        wrapper.write_text(LOCAL_MASKS)
        for attempt in range(args.repeat):  # alternating: both see the same machine load
            for name, script in zip(speeds, (wrapper, None), strict=True):
                run_dir = Path(tmp) / f"{attempt}-{script is None}"
                speeds[name].append(train(args.corpus, run_dir, width, 1, args, script))
            if attempt == 0:  # the wrapper took effect: the two runs drew other masks
                logs = [(Path(tmp) / f"0-{b}" / "steps.jsonl").read_text() for b in (False, True)]
                if args.dropout and logs[0] == logs[1]:
                    raise SystemExit("the per-rank run took the global masks' steps")
    reference = statistics.median(speeds["per-rank masks, before (ref.)"])
    for name, values in speeds.items():
        runs = ", ".join(f"{v:,.0f}" for v in values)
        median = statistics.median(values)
        print(f"{name:30s} median {median:9,.0f} chars/s  {median / reference:5.3f}x  ({runs})")
    before, own, now = (1e3 * seconds for seconds in time_draws(args))
    print(
        f"the draws alone, per step and process: {before:.2f} ms before (its own rows, "
        f"bernoulli_), {own:.2f} ms for its own rows from a generator, {now:.2f} ms for the "
        f"global batch's from a generator (charlstm now: {now / before:.2f}x before)"
    )
    return 0


def time_draws(args: argparse.Namespace, steps: int = 200) -> list[float]:
    """Seconds per step that one rank spends drawing a step's masks (one thread): of its own
    rows from torch's global generator (before issue 28), of its own rows from a generator
    of its own, and of the whole global batch keeping its rows (charlstm now). A forward pass
    draws the embedding's mask and one after each layer (per element, not --variational)."""
    from charlstm.model import Masks

    torch.set_num_threads(1)
    share = args.batch_size // args.processes
    like = torch.empty(0)
    shapes = [(args.num_steps, share, args.hidden)] * args.num_layers
    if args.embed_dropout:
        shapes.append((args.num_steps, share, args.hidden))  # the embedding: D = H
    results = []
    for seeded, rows in ((False, None), (True, None), (True, (0, share))):
        masks = Masks()
        if seeded:
            masks.seed(0, like.device, rows, args.batch_size)
        started = time.perf_counter()
        for _ in range(steps):
            for shape in shapes:
                masks.keep(like, shape, args.dropout, batch_dim=1)
        results.append((time.perf_counter() - started) / steps)
    return results


if __name__ == "__main__":
    raise SystemExit(main())
