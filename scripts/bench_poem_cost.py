"""What a poem costs against free text, from the command line (issue 32's target).

    OMP_NUM_THREADS=1 python scripts/bench_poem_cost.py --checkpoint /tmp/bench32/tang \\
        --repos /work/wt-bench,/work/wt-old --repeats 5

For each checkout in ``--repos`` (its code on ``PYTHONPATH``), in turns so that both see
the same load, it times these commands as separate processes:

- poem: ``charlstm generate --form lushi7 --num-samples 32 --candidates 4 --no-copy-filter
  --seed 1``;
- free: ``charlstm generate --prefix $'\\n' --num-samples 32 --length L --seed 1``, L the
  poem's characters (measured once from ``--format jsonl``: 8 lines of 7, their ，and 。
  and the rows' newlines); free text needs a prefix, and a newline is where a poem starts;
- start: ``charlstm generate --prefix $'\\n' --num-samples 1 --length 1 --seed 1``:
  start-up and loading the model, which the other two pay as well.

It prints the median wall time of each, the ratio poem / free, and the ratio with the
start-up taken off both (what the generation itself costs); ``--extra`` adds options to
the poem command (e.g. ``--cache`` or ``--dynamic``) for a further column.

Start-up (about 3 s) is most of each command, so the generation alone is timed as well,
in process: for each checkout, ``--rounds`` processes load the model once and time
``generate_many`` with the same settings (the poem: ``VerseSettings(form, candidates,
copy_filter=False)``, prompt ``""``; free: prompt ``"\\n"``, L characters), both seed 1,
``--repeats`` times each in turns after one warm-up; medians over all rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

#: One checkout's in-process timing (run with its code on PYTHONPATH).
IN_PROCESS = """
import json, sys, time
from charlstm.api import load_model
from charlstm.generation.verse.forms import VerseSettings
checkpoint, form, candidates, length, repeats = sys.argv[1:]
model = load_model(checkpoint, "cpu")
verse = VerseSettings(form=form, candidates=int(candidates), copy_filter=False)
runs = {
    "poem": lambda: model.generate_many([""], num_samples=32, verse=verse, seed=1),
    "free": lambda: model.generate_many(["\\n"], int(length), num_samples=32, seed=1),
}
times = {name: [] for name in runs}
for i in range(int(repeats) + 1):
    for name, run in runs.items():
        start = time.perf_counter()
        run()
        if i:
            times[name].append(time.perf_counter() - start)
print(json.dumps(times))
"""


def command(checkpoint: str, *options: str) -> list[str]:
    return [sys.executable, "-m", "charlstm", "generate", "--checkpoint", checkpoint, *options]


def run(repo: str, argv: list[str]) -> tuple[float, str]:
    """Wall seconds of ``argv`` with ``repo`` on ``PYTHONPATH``, and its standard output."""
    env = {"OMP_NUM_THREADS": "1", **os.environ, "PYTHONPATH": repo}
    start = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({repo}): {done.stderr[-2000:]}")
    return seconds, done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--repos", required=True, help="checkouts, comma-separated")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--form", default="lushi7")
    parser.add_argument("--candidates", type=int, default=4)
    parser.add_argument("--extra", default="", help="options added to a further poem command")
    parser.add_argument("--rounds", type=int, default=2, help="in-process timings (0: none)")
    args = parser.parse_args()
    repos = args.repos.split(",")
    poem = ["--form", args.form, "--num-samples", "32", "--candidates", str(args.candidates)]
    poem += ["--no-copy-filter", "--seed", "1"]
    _, out = run(repos[0], command(args.checkpoint, *poem, "--format", "jsonl"))
    texts = [json.loads(line)["text"] for line in out.splitlines() if line]
    length = len(texts[0])
    print(f"poem of {length} characters: {texts[0]!r}; lengths {sorted({len(t) for t in texts})}")
    commands = {
        "poem": command(args.checkpoint, *poem),
        "free": command(args.checkpoint, "--prefix", "\n", "--num-samples", "32"),
        "start": command(args.checkpoint, "--prefix", "\n", "--num-samples", "1"),
    }
    commands["free"] += ["--length", str(length), "--seed", "1"]
    commands["start"] += ["--length", "1", "--seed", "1"]
    if args.extra:
        commands["poem " + args.extra] = command(args.checkpoint, *poem, *args.extra.split())
    for name, argv in commands.items():
        print(f"{name}: {' '.join(map(repr, argv[1:]))}")
    times: dict[str, dict[str, list[float]]] = {r: {n: [] for n in commands} for r in repos}
    for repo in repos:  # warm the page cache and Python's bytecode
        run(repo, commands["start"])
    for i in range(args.repeats):
        for repo in repos:
            for name, argv in commands.items():
                seconds, _ = run(repo, argv)
                times[repo][name].append(seconds)
        print(f"repeat {i + 1}/{args.repeats}: {os.getloadavg()[0]:.2f} load", flush=True)
    rows = []
    for repo in repos:
        median = {n: statistics.median(t) for n, t in times[repo].items()}
        row = {
            "repo": repo,
            **{f"{n}_s": round(s, 3) for n, s in median.items()},
            "ratio": median["poem"] / median["free"],
            "ratio_less_start": (median["poem"] - median["start"])
            / (median["free"] - median["start"]),
            "all": times[repo],
        }
        if args.extra:
            extra = median["poem " + args.extra]
            row["extra_less_start_over_free"] = (extra - median["start"]) / (
                median["free"] - median["start"]
            )
        rows.append(row)
        print(
            f"{repo}: poem {median['poem']:.2f} s, free {median['free']:.2f} s, start "
            f"{median['start']:.2f} s; poem / free {row['ratio']:.2f}, start-up off both "
            f"{row['ratio_less_start']:.2f}"
            + (f"; {args.extra}: {median['poem ' + args.extra]:.2f} s" if args.extra else "")
        )
    print(json.dumps(rows))
    in_process(args, repos, length)


def in_process(args: argparse.Namespace, repos: list[str], length: int) -> None:
    times = {r: {"poem": [], "free": []} for r in repos}
    for _ in range(args.rounds):
        for repo in repos:
            argv = [args.checkpoint, args.form, str(args.candidates), str(length)]
            _, out = run(repo, [sys.executable, "-c", IN_PROCESS, *argv, str(args.repeats)])
            for name, seconds in json.loads(out).items():
                times[repo][name] += seconds
        print(f"in process, a round: {os.getloadavg()[0]:.2f} load", flush=True)
    for repo in repos:
        poem, free = (statistics.median(times[repo][n]) for n in ("poem", "free"))
        print(
            f"{repo} in process: poem {poem:.3f} s, free {free:.3f} s, poem / free "
            f"{poem / free:.2f} ({len(times[repo]['poem'])} of each)"
        )
    print(json.dumps(times))


if __name__ == "__main__":
    main()
