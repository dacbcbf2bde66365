"""Run overhead: how much of a whole ``charlstm train`` process is not training steps.

Runs the real command in a subprocess on the d2l setup (the first 10,000 characters of the
Jay Chou lyrics, newlines as spaces, V = 1,027; hidden 256, batch 32, 35 steps, 12 epochs,
no held-out part) and reports, per run:

- ``wall``: the whole process, from ``python -m charlstm train`` to its exit;
- ``steps``: the time inside the training loop's optimizer steps, the sum of
  ``metrics.jsonl``'s ``seconds`` (what each epoch line reports);
- ``outside``: the difference (interpreter and import start-up, reading the corpus, the
  checkpoints written with fsync, samples, logs), and its share of ``wall``;
- ``startup``: ``python -m charlstm --help``, the cost of starting the command at all;
- ``floor``: what any PyTorch training program pays before its first step, measured in the
  same minutes: ``import torch`` and one ``torch.optim.Adam``, whose first use imports
  ``torch._dynamo`` (torch.optim decorates its methods with it); ``own`` = ``outside`` -
  ``floor`` is the part of the overhead that charlstm itself adds, and ``own share`` its
  share of ``wall``.

``--baseline REF`` also runs the code of git commit ``REF`` (exported with ``git archive``
into a temporary folder; the checkout is not touched), alternating with this tree run by
run, so that "before" and "after" are measured in the same minutes on the same machine.
The median of ``--repeats`` runs is reported.

    python scripts/bench_overhead.py
    python scripts/bench_overhead.py --baseline 7a237b5 --repeats 3
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

ROOT = Path(__file__).resolve().parents[1]
#: ``../shared/data`` beside the checkout (or beside the folder of worktrees).
CORPUS = next(
    (path for path in (ROOT.parent / "shared" / "data" / "jaychou_lyrics.txt.zip",
                       ROOT.parents[1] / "shared" / "data" / "jaychou_lyrics.txt.zip")
     if path.exists()),
    ROOT.parent / "shared" / "data" / "jaychou_lyrics.txt.zip",
)  # fmt: skip
D2L_SETUP = [
    "--max-chars", "10000", "--newlines", "space", "--hidden", "256", "--batch-size", "32",
    "--num-steps", "35", "--epochs", "12", "--val-fraction", "0",
]  # fmt: skip


#: The start-up every PyTorch training program pays (see the module's docstring).
FLOOR = "import torch; torch.optim.Adam([torch.zeros(1, requires_grad=True)]).step()"


def run_once(source: Path, corpus: Path, backend: str, threads: int) -> dict[str, float]:
    env = dict(os.environ, PYTHONPATH=str(source), OMP_NUM_THREADS=str(threads))
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        command = [sys.executable, "-m", "charlstm", "train", str(corpus), *D2L_SETUP]
        command += ["--backend", backend, "--run-dir", str(run_dir)]
        start = time.perf_counter()
        subprocess.run(command, env=env, check=True, capture_output=True, cwd=tmp)
        wall = time.perf_counter() - start
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        steps = sum(row["seconds"] for row in rows)
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "charlstm", "--help"],
            env=env,
            check=True,
            capture_output=True,
            cwd=tmp,
        )
        startup = time.perf_counter() - start
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", FLOOR], env=env, check=True, cwd=tmp)
        floor = time.perf_counter() - start
    outside = wall - steps
    return {
        "wall": wall,
        "steps": steps,
        "outside": outside,
        "startup": startup,
        "floor": floor,
        "own": outside - floor,
    }


def export(ref: str, into: Path) -> Path:
    """The files of commit ``ref`` in ``into`` (``git archive``: no worktree, no checkout)."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", ref, "charlstm"], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def main() -> None:
    parser = argparse.ArgumentParser(description="Whole-process overhead of charlstm train.")
    parser.add_argument("--corpus", type=Path, default=CORPUS)
    parser.add_argument("--backend", default="scratch", choices=("scratch", "torch"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS of each run")
    parser.add_argument("--baseline", help="git commit to measure alongside this tree")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        sources = {"this tree": ROOT}
        if args.baseline:
            sources = {f"baseline {args.baseline}": export(args.baseline, Path(tmp)), **sources}
        results: dict[str, list[dict[str, float]]] = {name: [] for name in sources}
        for _ in range(args.repeats):
            for name, source in sources.items():
                row = run_once(source, args.corpus, args.backend, args.threads)
                results[name].append(row)
                print(f"{name}: " + ", ".join(f"{k} {v:.2f}" for k, v in row.items()), flush=True)
    print(
        f"charlstm train {args.corpus.name} {' '.join(D2L_SETUP)} --backend {args.backend}; "
        f"OMP_NUM_THREADS={args.threads}; median of {args.repeats} runs"
    )
    print(f"{'code':22s} {'wall s':>7s} {'steps s':>8s} {'outside s':>10s} {'share':>6s} "
          f"{'--help s':>9s} {'floor s':>8s} {'own s':>6s} {'own share':>9s}")  # fmt: skip
    for name, rows in results.items():
        median = {key: statistics.median(row[key] for row in rows) for key in rows[0]}
        share = statistics.median(row["outside"] / row["wall"] for row in rows)
        own = statistics.median(row["own"] / row["wall"] for row in rows)
        print(
            f"{name:22s} {median['wall']:7.2f} {median['steps']:8.2f} {median['outside']:10.2f} "
            f"{100 * share:5.1f}% {median['startup']:9.2f} {median['floor']:8.2f} "
            f"{median['own']:6.2f} {100 * own:8.1f}%"
        )


if __name__ == "__main__":
    main()
