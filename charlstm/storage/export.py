"""An exported model: the weights in safetensors, its settings and vocabulary in JSON, a card.

``charlstm export RUN OUT`` writes the layout people share models in::

    OUT/
      model.safetensors  the weights only (float32, or float16 with ``half``), no optimizer
      config.json        {"format": "charlstm-model", "format_version", "charlstm_version",
                         "dtype", "parameters", "model": ModelConfig, "train": TrainConfig,
                         "data": DataConfig, "source": where it came from and its scores}
      vocab.json         the vocabulary, index -> character (a run's vocab.json)
      ngram.txt          only for a run trained with --ngram-mix: the n-gram's training text
      README.md          the model card: corpus, held-out perplexity, the training command
                         (given by the caller: the library does not speak in options), how to
                         generate and serve

Loading one (:func:`load_export`, reached through :func:`charlstm.storage.checkpoint.resolve`
and :func:`~charlstm.storage.checkpoint.load_with_model` wherever a run is accepted) reads
JSON and safetensors only: nothing is unpickled. float16 weights are widened to float32, the
precision the model runs in. The model's tied weights (``--tie-weights``) are stored once.

The directory is written whole or not at all: every file goes into a temporary directory
beside ``OUT``, which is renamed to ``OUT`` at the end; a failure (a full disk) removes it
and leaves ``OUT`` as it was.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from charlstm import __version__
from charlstm.config import DataConfig, ModelConfig, TrainConfig
from charlstm.data.corpus import Vocab
from charlstm.errors import CharLSTMError, write_failed
from charlstm.fields import SettingError
from charlstm.model import CharLSTM, build_model
from charlstm.storage.checkpoint import Checkpoint, load_with_model, mismatched_weights, resolve

FORMAT = "charlstm-model"
FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
VOCAB = "vocab.json"
NGRAM = "ngram.txt"
CARD = "README.md"
#: safetensors metadata key listing tensors stored once under another name (tied weights).
ALIASES = "charlstm.aliases"


def is_export(path: str | Path) -> bool:
    """Whether ``path`` is an exported model's directory (it holds ``model.safetensors``)."""
    path = Path(path)
    return path.is_dir() and (path / WEIGHTS).is_file()


@dataclass(frozen=True)
class Exported:
    """What :func:`export_model` wrote."""

    directory: Path
    files: dict[str, int]  # name -> bytes
    parameters: int
    dtype: str


# -- writing ----------------------------------------------------------------------------------


def _unique_tensors(
    weights: dict[str, torch.Tensor], dtype: torch.dtype
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors to store (contiguous, in ``dtype``) and the names that alias a stored one."""
    stored: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple[int, int, tuple[int, ...]], str] = {}
    for name, tensor in weights.items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if key in seen:
            aliases[name] = seen[key]
            continue
        seen[key] = name
        value = tensor.detach().cpu().contiguous()
        stored[name] = value.to(dtype) if value.is_floating_point() else value
    return stored, aliases


def _run_facts(checkpoint_path: Path) -> dict[str, Any]:
    """Sizes and the best epoch's scores from the run directory holding the checkpoint."""
    run_dir = checkpoint_path.parent
    facts: dict[str, Any] = {}
    try:
        config = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
        for key in ("corpus_chars", "train_chars", "val_chars"):
            if isinstance(config.get(key), int):
                facts[key] = config[key]
    except (OSError, ValueError, AttributeError):
        pass  # a checkpoint file outside a run: the card says less
    from charlstm.storage.runs import read_metrics

    try:
        rows = read_metrics(run_dir) if (run_dir / "metrics.jsonl").is_file() else []
    except CharLSTMError:
        rows = []
    scored = [r for r in rows if isinstance(r.get("val_loss"), float)]
    if scored:
        best = min(scored, key=lambda r: r["val_loss"])
        facts["best_epoch"] = {
            k: best[k] for k in ("epoch", "step", "train_ppl", "val_ppl") if k in best
        }
    return facts


def _perplexity(loss: float) -> float | None:
    return math.exp(loss) if math.isfinite(loss) else None


def _card(name: str, meta: dict[str, Any], model: CharLSTM, command: str | None) -> str:
    source = meta["source"]
    config = ModelConfig.from_dict(meta["model"])
    corpus = source["corpus"]
    sizes = ""
    if "corpus_chars" in source:
        sizes = (
            f" ({source['corpus_chars']:,} characters, {config.vocab_size:,} distinct; "
            f"{source.get('train_chars', 0):,} trained on, {source.get('val_chars', 0):,} "
            "held out)"
        )
    layers = f"{config.num_layers}×{config.hidden_size}"
    backend = "nn.LSTM" if config.backend == "torch" else "scratch LSTM"
    softmax = "adaptive softmax" if model.adaptive else "full softmax"
    ppl = source.get("held_out_perplexity")
    best = source.get("best_epoch", {})
    if ppl is None:
        held_out = "not measured (the run held nothing out)"
    else:
        where = f"epoch {best['epoch']}, " if "epoch" in best else ""
        held_out = f"{ppl:.2f} ({where}step {source['step']:,}; the float32 model)"
    train_ppl = f"{best['train_ppl']:.2f}" if "train_ppl" in best else "not recorded"
    half = (
        " (stored as float16, widened to float32 when loaded)" if meta["dtype"] == "float16" else ""
    )
    return f"""# {name}

A character-level LSTM exported by charlstm {meta["charlstm_version"]}, trained on
`{corpus}`{sizes}.

| | |
|---|---|
| model | {backend} {layers}, {softmax}, {meta["parameters"]:,} parameters |
| weights | `{WEIGHTS}`, {meta["dtype"]}{half} |
| held-out perplexity | {held_out} |
| training perplexity | {train_ppl} |
| vocabulary | {config.vocab_size:,} characters (`{VOCAB}`) |

Perplexity is per character, on the last {source["val_fraction"]:.0%} of the corpus, which
the model never trained on.

{_command_section(command)}## Use

With charlstm installed (`pip install charlstm` in its source directory), this directory
goes wherever a run does:

```bash
charlstm generate --checkpoint {name} --prefix 分开 --seed 1
charlstm serve {name}                         # OpenAI-style HTTP API and a page
charlstm eval lyrics.zip --checkpoint {name}  # perplexity on other text
charlstm train new_lyrics.zip --init-from {name} --extend-vocab   # fine-tune
```

```python
from charlstm import load_model
model = load_model("{name}")
print(model.generate("分开", length=100, temperature=0.8, seed=1))
```

Loading reads JSON and safetensors only: nothing in this directory is executed or unpickled.
"""


def _command_section(command: str | None) -> str:
    if command is None:
        return ""
    return f"## Training command\n\n```bash\n{command}\n```\n\n"


def _write_files(
    tmp: Path,
    out_name: str,
    checkpoint: Checkpoint,
    model: CharLSTM,
    half: bool,
    command: str | None,
) -> dict[str, Any]:
    from safetensors.torch import save

    dtype = torch.float16 if half else torch.float32
    stored, aliases = _unique_tensors(checkpoint.model, dtype)
    parameters = sum(p.numel() for p in model.parameters())
    metadata = {"format": "pt", ALIASES: json.dumps(aliases)}
    # serialised here and written by Python, so a full disk is an OSError naming its cause
    (tmp / WEIGHTS).write_bytes(save(stored, metadata=metadata))
    train = checkpoint.train_config
    data = checkpoint.data_config
    loss = checkpoint.best_val_loss
    source = {
        "checkpoint": str(checkpoint.path),
        "corpus": Path(data.path).name,
        "epoch": checkpoint.epoch,
        "step": checkpoint.step,
        "held_out_loss": loss if math.isfinite(loss) else None,
        "held_out_perplexity": _perplexity(loss),
        "val_fraction": train.val_fraction,
        **_run_facts(Path(checkpoint.path)),
    }
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "charlstm_version": __version__,
        "dtype": "float16" if half else "float32",
        "parameters": parameters,
        "model": asdict(checkpoint.model_config),
        "train": asdict(train),
        "data": asdict(data),
        "source": source,
        "command": command,
    }
    (tmp / CONFIG).write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", "utf-8")
    (tmp / VOCAB).write_text(json.dumps(checkpoint.vocab.to_list(), ensure_ascii=False), "utf-8")
    if checkpoint.ngram_text is not None:
        (tmp / NGRAM).write_text(checkpoint.ngram_text, "utf-8")
    (tmp / CARD).write_text(_card(out_name, meta, model, command), "utf-8")
    mode = _umask_mode()
    for path in tmp.iterdir():
        os.chmod(path, mode & 0o666)  # a plain file's mode (safetensors writes 0600)
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())
    os.chmod(tmp, mode)  # mkdtemp made it private
    return meta


def _umask_mode() -> int:
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o777 & ~umask


def _check_target(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise SettingError(f"{{out_dir}} {out} is a file, not a directory", arguments=("out_dir",))
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise SettingError(
            f"{out} is not empty; export into a new directory, or replace it with {{overwrite}}",
            arguments=("overwrite",),
        )


def export_model(
    source: str | Path,
    out: str | Path,
    *,
    half: bool = False,
    overwrite: bool = False,
    command: Callable[[Checkpoint], str] | None = None,
) -> Exported:
    """Export the model of ``source`` (a run directory, its ``best.pt``; a checkpoint file)
    into the directory ``out``: weights, settings, vocabulary and a model card.

    ``half`` stores the weights as float16 (half the size). ``command`` renders the
    checkpoint's settings as the command that trains such a run, for the card and
    config.json (``charlstm export`` passes :func:`charlstm.cli.options.training_command`).
    ``out`` must be new or empty, unless ``overwrite``. Nothing half-written is ever left
    (see the module docstring).
    """
    out = Path(out)
    checkpoint, model = load_with_model(resolve(source, prefer="best.pt"))
    if out.exists() and out.resolve() == Path(checkpoint.path).resolve():
        raise SettingError("{out_dir} must differ from the model exported", arguments=("out_dir",))
    _check_target(out, overwrite)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    except OSError as err:
        raise write_failed(out, err, "run the command again") from err
    try:
        text = command(checkpoint) if command is not None else None
        meta = _write_files(tmp, out.name, checkpoint, model, half, text)
        if out.exists():  # empty, or replaced with overwrite: move it aside, then swap
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
            os.replace(out, old / out.name)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise write_failed(out, err, "run the command again") from err
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    files = {p.name: p.stat().st_size for p in sorted(out.iterdir())}
    return Exported(out, files, meta["parameters"], meta["dtype"])


# -- reading ----------------------------------------------------------------------------------


def _read_json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise CharLSTMError(f"exported model {path.parent} has no {path.name} ({what})")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise CharLSTMError(f"exported model {path.parent}: {path.name} is not valid JSON") from err


def _read_weights(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        weights = load_file(str(path))
        aliases = json.loads(metadata.get(ALIASES, "{}"))
    except Exception as err:  # safetensors raises its own SafetensorError, plus OSError
        raise CharLSTMError(
            f"not a readable safetensors file: {path} (truncated, corrupt, or another kind of file)"
        ) from err
    if not isinstance(aliases, dict):
        raise CharLSTMError(f"not a charlstm model: {path} has malformed metadata")
    return weights, aliases


def _read_settings(directory: Path) -> tuple[dict[str, Any], Checkpoint, CharLSTM]:
    """``config.json`` and ``vocab.json``: the export's metadata, a checkpoint without
    weights yet, and its model, built from the recorded architecture."""
    meta = _read_json(directory / CONFIG, "the model settings")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CharLSTMError(f"not a charlstm model: {directory / CONFIG} is another format")
    version = meta.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CharLSTMError(
            f"{directory} has export format {version!r}; this charlstm reads up to "
            f"{FORMAT_VERSION}: upgrade charlstm"
        )
    chars = _read_json(directory / VOCAB, "the vocabulary")
    source = meta.get("source") if isinstance(meta.get("source"), dict) else {}
    loss = source.get("held_out_loss")
    try:
        checkpoint = Checkpoint(
            model_config=ModelConfig.from_dict(meta["model"]),
            train_config=TrainConfig.from_dict(meta["train"]),
            data_config=DataConfig.from_dict(meta["data"]),
            vocab=Vocab(chars),
            model={},
            epoch=int(source.get("epoch") or 0),
            step=int(source.get("step") or 0),
            best_val_loss=float(loss) if isinstance(loss, (int, float)) else math.inf,
            path=directory,
        )
        with torch.random.fork_rng(devices=[]):  # leave the caller's random state alone
            model = build_model(checkpoint.model_config)
    except (KeyError, TypeError, ValueError, AttributeError, CharLSTMError) as err:
        raise CharLSTMError(
            f"exported model {directory} has a malformed config.json: {err}"
        ) from err
    if len(checkpoint.vocab) != checkpoint.model_config.vocab_size:
        raise CharLSTMError(
            f"exported model {directory} is inconsistent: {len(checkpoint.vocab)} characters "
            f"in {VOCAB} but config.json describes a model for "
            f"{checkpoint.model_config.vocab_size}"
        )
    return meta, checkpoint, model


def load_export(directory: str | Path) -> tuple[Checkpoint, CharLSTM]:
    """Read an exported model: a :class:`~charlstm.storage.checkpoint.Checkpoint` holding the
    weights and settings (no optimizer, so it fine-tunes but does not resume) and its model,
    built from ``config.json`` with the weights checked against it. Any problem is one
    :class:`CharLSTMError` line naming the directory."""
    directory = Path(directory)
    _, checkpoint, model = _read_settings(directory)
    weights, aliases = _read_weights(directory / WEIGHTS)
    for name, target in aliases.items():
        if target in weights:
            weights[name] = weights[target]
    wrong = mismatched_weights(weights, model)
    if wrong:
        raise CharLSTMError(
            f"exported model {directory}: {WEIGHTS} does not match config.json "
            f"({len(wrong)} weights differ, e.g. {wrong[0]})"
        )
    # float16 storage is widened: the model runs in float32
    model.load_state_dict(
        {k: v.float() if v.is_floating_point() else v for k, v in weights.items()}
    )
    checkpoint.model = model.state_dict()  # tied weights share one tensor again
    if checkpoint.train_config.ngram_mix:
        path = directory / NGRAM
        if not path.is_file():
            raise CharLSTMError(
                f"exported model {directory} interpolates an n-gram but has no {NGRAM}"
            )
        checkpoint.ngram_text = path.read_text(encoding="utf-8")
    return checkpoint, model


__all__ = [
    "Exported",
    "export_model",
    "is_export",
    "load_export",
]
