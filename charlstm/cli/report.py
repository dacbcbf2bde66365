"""What a run is and how its training went: ``charlstm info`` and ``charlstm plot``.

Both read a checkpoint (a run directory gives its ``best.pt``) and the ``metrics.jsonl``
beside it, one line per epoch as the training loop writes them. Neither needs the run's
lock: they may read a run while it trains (a torn or damaged line is skipped).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from charlstm.cli.display import sparkline, squeeze, table
from charlstm.errors import CharLSTMError
from charlstm.model import build_model
from charlstm.storage import checkpoint as ckpt
from charlstm.storage import runs, safe_io

PLOT_FORMATS = (".png", ".pdf", ".svg")
PLOT_HINT = "pip install 'charlstm[plot]'"
TABLE_ROWS = 20  # epochs shown in the table; the sparkline covers all of them
SPARK_WIDTH = 60


def epoch_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The run's metrics, one row per epoch in order (a repeated epoch: its last row)."""
    by_epoch: dict[int, dict[str, Any]] = {}
    for row in runs.read_metrics(run_dir):
        if isinstance(row.get("epoch"), int):
            by_epoch[row["epoch"]] = row
    return [by_epoch[e] for e in sorted(by_epoch)]


def describe(path: str | Path) -> dict[str, Any]:
    """Everything ``charlstm info`` shows, as plain data."""
    file = ckpt.resolve(path, prefer="best.pt")
    checkpoint = ckpt.load(file)
    m, t, d = checkpoint.model_config, checkpoint.train_config, checkpoint.data_config
    model = build_model(m)
    metrics = epoch_metrics(file.parent)
    val_losses = [r["val_loss"] for r in metrics if r.get("val_loss") is not None]
    best = min(val_losses) if val_losses else checkpoint.best_val_loss
    best_epoch = next((r["epoch"] for r in metrics if r.get("val_loss") == best), None)
    return {
        "checkpoint": str(file),
        "backend": m.backend,
        "scratch_impl": m.scratch_impl if m.backend == "scratch" else None,
        "layers": m.num_layers,
        "hidden": m.hidden_size,
        "embedding": m.input_size,
        "dropout": m.dropout,
        "peephole": m.peephole,
        "tie_weights": m.tie_weights,
        "ema": t.ema,
        "ngram_mix": t.ngram_mix or None,
        "mix_weight": t.mix_weight if t.ngram_mix else None,
        "parameters": model.num_parameters(),
        "vocab_size": m.vocab_size,
        "corpus": d.path,
        "member": d.member,
        "newlines": d.newlines,
        "max_chars": d.max_chars,
        "epochs": max((r["epoch"] for r in metrics), default=checkpoint.epoch),
        "epochs_planned": t.epochs,
        "checkpoint_epoch": checkpoint.epoch,
        "step": checkpoint.step,
        "best_val_loss": best if math.isfinite(best) else None,
        "best_val_ppl": math.exp(min(best, 700)) if math.isfinite(best) else None,
        "best_epoch": best_epoch,
        "metrics": metrics,
    }


def _num(value: Any, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def render_info(info: dict[str, Any]) -> str:
    """``describe``'s data as the text ``charlstm info`` prints."""
    kind = "nn.LSTM" if info["backend"] == "torch" else info["scratch_impl"]
    extras = [f"embedding {info['embedding']}", f"dropout {info['dropout']:g}"]
    if info["peephole"]:
        extras.append("peepholes")
    if info["tie_weights"]:
        extras.append("tied weights")
    if info.get("ema"):
        extras.append(f"weights averaged (--ema {info['ema']:g})")
    if info.get("ngram_mix"):
        extras.append(
            f"interpolated with a Kneser-Ney {info['ngram_mix']}-gram at weight "
            f"{info['mix_weight']:g}"
        )
    corpus = info["corpus"]
    details = [f"newlines {info['newlines']}"]
    if info["member"]:
        details.insert(0, f"member {info['member']}")
    if info["max_chars"]:
        details.append(f"first {info['max_chars']:,} characters")
    layers = "layer" if info["layers"] == 1 else "layers"
    lines = [
        f"checkpoint   {info['checkpoint']} (after epoch {info['checkpoint_epoch']}, "
        f"step {info['step']:,})",
        f"model        {info['backend']} backend ({kind}), {info['layers']} LSTM {layers} x "
        f"{info['hidden']} hidden, " + ", ".join(extras),
        f"parameters   {info['parameters']:,}",
        f"vocabulary   {info['vocab_size']:,} characters",
        f"corpus       {corpus} ({', '.join(details)})",
        f"epochs       {info['epochs']} trained (of {info['epochs_planned']} planned)",
    ]
    if info["best_val_ppl"] is not None:
        at = f" at epoch {info['best_epoch']}" if info["best_epoch"] is not None else ""
        lines.append(
            f"held-out     best perplexity {info['best_val_ppl']:.2f} "
            f"(loss {info['best_val_loss']:.4f} nats/char){at}"
        )
    else:
        lines.append("held-out     none (trained without a held-out part)")
    metrics = info["metrics"]
    if not metrics:
        lines.append("metrics      none (no metrics.jsonl beside the checkpoint)")
        return "\n".join(lines)
    shown = metrics[-TABLE_ROWS:]
    rows = [
        [
            str(r["epoch"]),
            f"{r.get('step', 0):,}",
            _num(r.get("train_loss"), ".4f"),
            _num(r.get("train_ppl"), ".2f"),
            _num(r.get("val_loss"), ".4f"),
            _num(r.get("val_ppl"), ".2f"),
            _num(r.get("lr"), ".3g"),
            _num(r.get("seconds"), ".1f"),
            "*" if r.get("best") and r.get("val_loss") is not None else "",
        ]
        for r in shown
    ]
    headers = ["epoch", "step", "train loss", "train ppl", "held-out loss", "held-out ppl"]
    lines += ["", table([*headers, "lr", "seconds", "best"], rows)]
    if len(metrics) > len(shown):
        lines.append(f"(the first {len(metrics) - len(shown)} epochs are in metrics.jsonl)")
    train = [r.get("train_loss") for r in metrics]
    val = [r.get("val_loss") for r in metrics]
    known = [v for v in train + val if v is not None and math.isfinite(v)]
    low, high = (min(known), max(known)) if known else (0.0, 0.0)
    lines.append("")
    for name, series in (("train loss   ", train), ("held-out loss", val)):
        values = [v for v in series if v is not None]
        if not values:
            continue
        spark = sparkline(squeeze(series, SPARK_WIDTH), low, high)
        lines.append(f"{name}  {spark}  {values[0]:.3f} → {values[-1]:.3f}")
    per = "epoch" if len(metrics) <= SPARK_WIDTH else f"{len(metrics) / SPARK_WIDTH:.1f} epochs"
    lines.append(f"(one column per {per}; both on one scale, ▁ {low:.3f} to █ {high:.3f})")
    return "\n".join(lines)


def plot_perplexity(run: str | Path, out: str | Path | None = None) -> Path:
    """A PNG of training and held-out perplexity per epoch; returns its path.

    ``run`` is a run directory (or a checkpoint file in one); ``out`` defaults to
    ``<run>/perplexity.png`` (a directory: ``perplexity.png`` in it; the suffix, .png, .pdf
    or .svg, picks the format). Needs matplotlib (the ``plot`` extra).
    """
    run = Path(run)
    run_dir = run.parent if run.is_file() else run
    if not run_dir.is_dir():
        raise CharLSTMError(f"run directory not found: {run}")
    out = run_dir / "perplexity.png" if out is None else Path(out)
    if out.is_dir():
        out = out / "perplexity.png"
    if out.suffix.lower() not in PLOT_FORMATS:
        raise CharLSTMError(
            f"--out {out}: name a {', '.join(PLOT_FORMATS)} file (the suffix picks the format)"
        )
    metrics = epoch_metrics(run_dir)
    if not metrics:
        raise CharLSTMError(f"no metrics in {run_dir} (metrics.jsonl is missing or empty)")
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise CharLSTMError(f"plot needs matplotlib: {PLOT_HINT}") from None
    epochs = [r["epoch"] for r in metrics]
    train = [r.get("train_ppl") for r in metrics]
    val = [r.get("val_ppl") for r in metrics]
    figure = Figure(figsize=(7, 4.2), dpi=120)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.plot(epochs, train, marker="o", markersize=3, label="training")
    if any(v is not None for v in val):
        points = [(e, v) for e, v in zip(epochs, val, strict=True) if v is not None]
        axes.plot(*zip(*points, strict=True), marker="o", markersize=3, label="held-out")
        best_epoch, best = min(points, key=lambda p: p[1])
        axes.scatter([best_epoch], [best], s=60, color="black", zorder=3)
        axes.annotate(
            f"best {best:.2f}",
            (best_epoch, best),
            textcoords="offset points",
            xytext=(6, 8),
        )
    positive = [v for v in train + val if v is not None and v > 0]
    if positive and max(positive) / min(positive) > 20:
        axes.set_yscale("log")
    axes.set_xlabel("epoch")
    axes.set_ylabel("perplexity")
    axes.set_title(f"{run_dir.name}: perplexity per epoch")
    axes.grid(True, alpha=0.3)
    axes.legend()
    figure.tight_layout()
    image_format = out.suffix.lower().lstrip(".")
    # atomically: a full disk leaves the previous plot (or none), never half an image
    return safe_io.write_atomic(
        out, lambda handle: figure.savefig(handle, format=image_format), make_parents=True
    )
