"""``--cache`` and ``--dynamic`` with a form, from the command line (issue 32's target).

    OMP_NUM_THREADS=1 python scripts/bench_form_adapt.py --checkpoint /tmp/bench32/tang \\
        --repos /work/wt-bench,/work/wt-old --repeats 3

For each checkout in ``--repos`` (its code on ``PYTHONPATH``) and each of: no adaptation,
``--cache``, ``--dynamic``, ``--cache --dynamic``, it runs
``charlstm generate --checkpoint C --form jueju5 --seed 1 --num-samples N OPTIONS``
``--repeats`` times (separate processes, checkouts and options in turns): whether it
succeeds (else its one-line error), whether every run wrote the same poems, and the median
wall time with and without the start-up (``--prefix $'\\n' --num-samples 1 --length 1``,
timed the same way, taken off).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

OPTIONS = ["", "--cache", "--dynamic", "--cache --dynamic"]


def run(repo: str, argv: list[str]) -> tuple[float, subprocess.CompletedProcess]:
    env = {"OMP_NUM_THREADS": "1", **os.environ, "PYTHONPATH": repo}
    start = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True)
    return time.perf_counter() - start, done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--repos", required=True, help="checkouts, comma-separated")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--form", default="jueju5")
    parser.add_argument("--num-samples", type=int, default=1)
    args = parser.parse_args()
    repos = args.repos.split(",")
    base = [sys.executable, "-m", "charlstm", "generate", "--checkpoint", args.checkpoint]
    poem = [*base, "--form", args.form, "--seed", "1", "--num-samples", str(args.num_samples)]
    start = [*base, "--prefix", "\n", "--num-samples", "1", "--length", "1", "--seed", "1"]
    print(f"poem: {' '.join(poem[1:])} [OPTIONS]")
    seconds = {(r, o): [] for r in repos for o in [*OPTIONS, "start"]}
    outputs = {(r, o): [] for r in repos for o in OPTIONS}
    for _ in range(args.repeats):
        for repo in repos:
            wall, _ = run(repo, start)
            seconds[repo, "start"].append(wall)
            for option in OPTIONS:
                wall, done = run(repo, poem + option.split())
                seconds[repo, option].append(wall)
                outputs[repo, option].append(
                    done.stdout
                    if done.returncode == 0
                    else f"exit {done.returncode}: "
                    f"{done.stderr.strip().splitlines()[-1] if done.stderr.strip() else ''}"
                )
        print(f"a round: {os.getloadavg()[0]:.2f} load", flush=True)
    for repo in repos:
        up = statistics.median(seconds[repo, "start"])
        print(f"{repo}: start-up {up:.2f} s")
        for option in OPTIONS:
            texts = outputs[repo, option]
            wall = statistics.median(seconds[repo, option])
            failed = texts[0].startswith("exit ")
            same = "same every run" if len(set(texts)) == 1 else "DIFFERS between runs"
            print(
                f"  {option or '(none)':<17} {wall:6.2f} s, {wall - up:5.2f} s less start-up; "
                + (texts[0] if failed else f"{same}: {texts[0].strip()!r}")
            )


if __name__ == "__main__":
    main()
