"""Run directories: ``runs/<name>/`` holding ``config.json``, ``vocab.json``,
``metrics.jsonl``, ``last.pt`` and ``best.pt``."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from charlstm.errors import CharLSTMError

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
LAST = "last.pt"
BEST = "best.pt"


def default_run_name(corpus: str | Path, backend: str) -> str:
    stem = Path(corpus).name.split(".")[0] or "corpus"
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{stem}-{backend}"


def prepare_run_dir(path: str | Path, overwrite: bool = False) -> Path:
    """Create a fresh run directory; refuse to reuse one that holds a run unless ``overwrite``."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise CharLSTMError(f"run directory is a file: {path}")
    if path.is_dir() and any((path / name).exists() for name in (LAST, BEST, CONFIG_FILE)):
        if not overwrite:
            raise CharLSTMError(
                f"run directory {path} already holds a run; pass --resume {path} to continue "
                "it or --overwrite to replace it"
            )
        for name in (LAST, BEST, CONFIG_FILE, METRICS_FILE):
            (path / name).unlink(missing_ok=True)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise CharLSTMError(f"cannot write to run directory {path}: {err.strerror}") from err
    return path


def latest_run(root: str | Path = "runs") -> Path:
    """The most recently modified run directory (one holding a checkpoint) under ``root``."""
    root = Path(root)
    candidates = (
        [d for d in root.glob("*") if d.is_dir() and ((d / BEST).exists() or (d / LAST).exists())]
        if root.is_dir()
        else []
    )
    if not candidates:
        raise CharLSTMError(
            f"no trained run found under {root}/; train one with 'charlstm train' "
            "or pass --checkpoint"
        )
    return max(candidates, key=lambda d: max(f.stat().st_mtime for f in d.glob("*.pt")))


def write_config(run_dir: Path, config: dict[str, Any]) -> None:
    (run_dir / CONFIG_FILE).write_text(
        json.dumps(config, ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
    )


def append_metrics(run_dir: Path, row: dict[str, Any]) -> None:
    with open(run_dir / METRICS_FILE, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line torn by a crash mid-write
    return rows
