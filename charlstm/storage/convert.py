"""Convert a checkpoint between the scratch and torch backends (same function, new layout)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from charlstm.errors import CharLSTMError
from charlstm.fields import SettingError
from charlstm.model import convert_state_dict
from charlstm.storage import checkpoint as ckpt


def convert_checkpoint(source: str | Path, to_backend: str, out: str | Path) -> Path:
    """Write ``source``'s model as a ``to_backend`` checkpoint at ``out``.

    The weights (for a run trained with ``--ema``, their moving average) are mapped exactly
    (see :func:`charlstm.model.convert_state_dict`), so the converted model gives the same
    logits and, with the same seed, the same text. The optimizer state and the trained
    weights behind an average belong to the training run and are dropped: the result is
    for ``generate``, ``eval`` and ``--init-from``, not for ``--resume``. DropConnect
    (``--weight-drop``) only acts while training, so a model trained with it converts to
    ``nn.LSTM`` with that setting dropped; peephole connections have no ``nn.LSTM`` twin.
    """
    checkpoint = ckpt.load(ckpt.resolve(source, prefer="best.pt"))
    config = checkpoint.model_config
    if to_backend not in ("scratch", "torch"):
        raise SettingError(
            f"unknown {{to}} {to_backend!r}; choose scratch or torch", arguments=("to",)
        )
    if to_backend == "torch" and config.peephole:
        raise CharLSTMError("this scratch model has peephole connections: nn.LSTM has none")
    out = Path(out)
    if out.resolve() == Path(checkpoint.path).resolve():
        raise SettingError("{out} must differ from the source checkpoint", arguments=("out",))
    if out.exists():  # it could be another run's best.pt
        raise SettingError(
            f"{{out}} {out} exists; convert writes a new file, never over one", arguments=("out",)
        )
    weights = convert_state_dict(checkpoint.model, config, to_backend)
    converted = replace(
        checkpoint,
        # --weight-drop is a training-time regulariser that nn.LSTM cannot apply
        model_config=replace(
            config,
            backend=to_backend,
            weight_drop=config.weight_drop if to_backend == "scratch" else 0.0,
        ),
        model=weights,
        optimizer=None,
        progress={},
        training_model=None,
    )
    return ckpt.save(converted, out)
