"""Prepare a large synthetic corpus and report peak memory and throughput.

The corpus is tang_poems repeated to ``--size-mb`` MB of UTF-8 in a temporary directory
(deleted afterwards, never committed). ``prepare`` runs in a child process, so the peak
resident memory reported is its own (``ru_maxrss`` of the child).

    python scripts/bench_scale.py                 # ~1 GB; targets <= 1.5 GB RSS, >= 20 MB/s
    python scripts/bench_scale.py --size-mb 100   # quick
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TANG = ROOT.parent / "shared" / "data" / "tang_poems.txt.zip"

CHILD = """
import sys
from charlstm.config import DataConfig
from charlstm.prepared import prepare
prepare(DataConfig(path=sys.argv[1]), 0.1, sys.argv[2])
"""


def synthesise(path: Path, size_mb: int) -> int:
    """Write tang_poems repeated to about ``size_mb`` MB; return the size in bytes."""
    sys.path.insert(0, str(ROOT))
    from charlstm.corpus import read_text

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


def child_peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # kB on Linux


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_scale.py", description=__doc__.split("\n")[0])
    parser.add_argument("--size-mb", type=int, default=1000, help="corpus size (default 1000)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="charlstm-scale-") as tmp:
        source, out = Path(tmp) / "big.txt", Path(tmp) / "prepared"
        size = synthesise(source, args.size_mb)
        print(f"corpus: {size / 1e6:,.0f} MB of UTF-8 (tang_poems repeated)")
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", CHILD, str(source), str(out)], cwd=ROOT, check=True)
        seconds = time.perf_counter() - start
        print(
            f"prepare: {seconds:.1f} s, {size / 1e6 / seconds:.1f} MB/s, "
            f"peak RSS {child_peak_mb():,.0f} MB (targets: >= 20 MB/s, <= 1,536 MB)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
