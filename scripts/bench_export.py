"""``charlstm export`` on a real model: file sizes, start-up, seeded text and float16's cost.

Takes a trained run (``--run``; without one it trains the Tang poems with
``--preset large-corpus --time-limit MINUTES`` first), exports it as float32 and as float16
(``--half``) into a temporary folder, and reports, all measured in the same minutes:

- ``size``: ``model.safetensors`` against parameters x 4 bytes (x 2 for ``--half``), and the
  run's ``best.pt`` (which holds the optimizer's moments too);
- ``start-up``: the median of ``--repeats`` runs of ``charlstm generate --length 1`` from the
  export and from the run, against the median of ``python -c "import torch"`` (the floor any
  PyTorch program pays), run in turn so that the machine's load moves all three alike;
- ``seeded``: whether ``--seed`` texts from the float32 export equal the run's (three seeds);
- ``half``: held-out perplexity (``charlstm eval CORPUS``, the run's held-out part) of the
  float32 and the float16 export, and the relative change.

    python scripts/bench_export.py --run runs/tang
    python scripts/bench_export.py --time-limit 3          # trains a Tang model first
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
TANG = ROOT.parent / "shared" / "data" / "tang_poems.txt.zip"
ENV = dict(os.environ, PYTHONPATH=str(ROOT))


def charlstm(*args: object, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "charlstm", *map(str, args)],
        capture_output=True,
        text=True,
        env=ENV,
        check=check,
    )


def seconds(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, capture_output=True, env=ENV, check=True)
    return time.perf_counter() - start


def start_up(run: Path, export: Path, repeats: int, prefix: str) -> dict[str, float]:
    generate = [sys.executable, "-m", "charlstm", "generate", "--length", "1", "--prefix", prefix]
    commands = {
        "import torch": [sys.executable, "-c", "import torch"],
        "generate from export": [*generate, "--checkpoint", str(export)],
        "generate from run": [*generate, "--checkpoint", str(run)],
    }
    for command in commands.values():  # warm the page cache once
        seconds(command)
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(repeats):
        for name, command in commands.items():
            times[name].append(seconds(command))
    return {name: statistics.median(values) for name, values in times.items()}


def perplexity(model: Path, corpus: Path) -> float:
    result = charlstm("eval", corpus, "--checkpoint", model, "--json")
    return json.loads(result.stdout)["perplexity"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, help="a trained run (default: train one on Tang)")
    parser.add_argument("--time-limit", type=float, default=3.0, help="minutes, when training")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--prefix", default="春")
    parser.add_argument("--no-eval", action="store_true", help="skip the held-out perplexities")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        run = args.run
        if run is None:
            run = Path(tmp) / "tang"
            print(f"training {run} (large-corpus preset, {args.time_limit:g} minutes)")
            charlstm(
                "train", TANG, "--preset", "large-corpus", "--time-limit", args.time_limit,
                "--run-dir", run, "--sample-every", "0",
            )  # fmt: skip
        full, half = Path(tmp) / "export", Path(tmp) / "export-half"
        charlstm("export", run, full)
        charlstm("export", run, half, "--half")
        parameters = json.loads((full / "config.json").read_text(encoding="utf-8"))["parameters"]
        size = (full / "model.safetensors").stat().st_size
        half_size = (half / "model.safetensors").stat().st_size
        best = (run / "best.pt").stat().st_size
        print(f"\nmodel: {run}, {parameters:,} parameters")
        print(f"{'file':<34} {'bytes':>12}  ratio")
        print(f"{'best.pt':<34} {best:>12,}  {best / (parameters * 4):.3f} x params x 4")
        print(f"{'model.safetensors':<34} {size:>12,}  {size / (parameters * 4):.4f} x params x 4")
        print(
            f"{'model.safetensors (--half)':<34} {half_size:>12,}  "
            f"{half_size / (parameters * 2):.4f} x params x 2"
        )

        medians = start_up(run, full, args.repeats, args.prefix)
        floor = medians["import torch"]
        print(f"\nstart-up, median of {args.repeats} (seconds; ratio to import torch)")
        for name, value in medians.items():
            print(f"{name:<24} {value:6.3f}  {value / floor:.3f}x")

        same = 0
        for seed in (1, 2, 3):
            options = ["--prefix", args.prefix, "--length", "200", "--seed", seed]
            texts = [charlstm("generate", "--checkpoint", m, *options).stdout for m in (run, full)]
            same += texts[0] == texts[1]
        print(f"\nseeded texts equal (float32 export vs run): {same} of 3")

        if not args.no_eval:
            corpus = json.loads((full / "config.json").read_text(encoding="utf-8"))["data"]["path"]
            ppl = perplexity(full, Path(corpus))
            ppl_half = perplexity(half, Path(corpus))
            print(
                f"held-out perplexity: float32 {ppl:.4f}, float16 {ppl_half:.4f} "
                f"({(ppl_half / ppl - 1) * 100:+.4f} %)"
            )


if __name__ == "__main__":
    main()
