"""Where a model runs: one rule for training and for generation.

``auto`` is CUDA when available, else the CPU; asking for CUDA without one is an error.
"""

from __future__ import annotations

from typing import Protocol

import torch

from charlstm.fields import SettingError


class Ranked(Protocol):
    """A torchrun process's place on its machine (:class:`charlstm.training.distributed.World`)."""

    @property
    def distributed(self) -> bool: ...

    @property
    def local_rank(self) -> int: ...


def resolve_device(name: str, world: Ranked | None = None) -> torch.device:
    """The device ``name`` (``auto``, ``cpu``, ``cuda`` or ``cuda:N``) stands for.

    On CUDA, float32 matrix products use TensorFloat-32, as cuDNN's LSTM already does.
    Under torchrun (``world``) plain ``cuda`` is the rank's own GPU, ``cuda:LOCAL_RANK``.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SettingError("{device} cuda: no CUDA GPU is available here; use {device} cpu")
    if not (name == "cpu" or name.startswith("cuda")):
        raise SettingError(f"unknown {{device}} {name!r}; choose auto, cpu or cuda")
    if name.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        if name == "cuda" and world is not None and world.distributed:
            return torch.device("cuda", world.local_rank % torch.cuda.device_count())
    return torch.device(name)
