"""Batches of ``(x, y)`` windows over a corpus, the way d2l samples them.

Both samplers are indexable (``len(batches)``, ``batches[i]``) so that a run can resume
in the middle of an epoch at the next batch; their order depends only on
``(seed, epoch)``, never on a global random state.

Shapes: ``x`` and ``y`` are ``(T, N)`` int64, time first; ``y`` is ``x`` shifted one
character ahead.

The indices may be a ``(n,)`` torch tensor or a NumPy array of any integer dtype, such as
the ``np.memmap`` of a prepared corpus (:mod:`charlstm.data.prepared`): then only the windows
a batch needs are read and turned into tensors, never the whole array.
"""

from __future__ import annotations

from typing import Union

import numpy as np
import torch

from charlstm.fields import SettingError

#: ``(n,)`` indices: a tensor, or a NumPy array / ``np.memmap`` of any integer dtype.
Indices = Union[torch.Tensor, np.ndarray]  # noqa: UP007  (a runtime alias on Python 3.10)


def _as_long(window: Indices) -> torch.Tensor:
    """A window of the indices as an int64 tensor (a NumPy window is copied, alone)."""
    if isinstance(window, torch.Tensor):
        return window
    return torch.from_numpy(np.array(window, dtype=np.int64))  # a copy: never the caller's


def check_length(num_chars: int, batch_size: int, num_steps: int, what: str = "corpus") -> None:
    """Raise ``SettingError`` unless ``num_chars`` fills one batch: N x (T + 1) characters."""
    need = batch_size * (num_steps + 1)
    if num_chars < need:
        raise SettingError(
            f"{what} too short: {num_chars} characters, but {{batch_size}} {batch_size} x "
            f"({{num_steps}} {num_steps} + 1) needs at least {need}; "
            "use a longer text or smaller {batch_size}/{num_steps}"
        )


def check_share(batch_size: int, rank: int, world_size: int) -> None:
    """Raise unless ``world_size`` processes can split ``batch_size`` rows evenly."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"no rank {rank} in a world of {world_size} processes")
    if batch_size % world_size:
        raise SettingError(
            f"{{batch_size}} {batch_size} is not a multiple of the {world_size} processes "
            "torchrun started: it is the global batch, split evenly between them"
        )


class ConsecutiveBatches:
    """Adjacent windows: batch ``i + 1`` continues each row where batch ``i`` stopped.

    The corpus is reshaped once into ``N = batch_size`` rows of ``L = n // N`` characters
    (d2l's ``data_iter_consecutive``) and read left to right in windows of ``T`` steps::

        row 0:  a b c d | e f g h | i j
        row 1:  k l m n | o p q r | s t       x = batch 0 (T=4): columns 0..3
                ^ x[0]  ^ x[1]    ^ last      y = columns 1..4, and so on

    Windows ``0 .. (L - 1) // T - 1`` are exactly d2l's; one more, shorter window covers
    what is left of each row, so within an epoch every character except each row's first
    (and the ``n - N * L`` characters past the last row) is a target exactly once.
    The hidden state is carried from one batch to the next (rows are continuous text).
    """

    carries_state = True

    def __init__(
        self,
        indices: Indices,
        batch_size: int,
        num_steps: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        check_length(len(indices), batch_size, num_steps)
        check_share(batch_size, rank, world_size)
        self.batch_size, self.num_steps = batch_size, num_steps
        row_len = len(indices) // batch_size
        # (N, L): a view in both cases, a tensor view or a NumPy (memmap) view, no copy
        rows = indices[: batch_size * row_len]
        if isinstance(rows, torch.Tensor):
            self.rows = rows.view(batch_size, row_len)
        else:
            self.rows = rows.reshape(batch_size, row_len)
        # Data parallelism (Transformer-XL's LMOrderedIterator): rank r reads its own
        # contiguous rows [r N / W, (r + 1) N / W); together the ranks read all N rows.
        share = batch_size // world_size
        self.first_row, self.num_rows = rank * share, share
        self.rows = self.rows[self.first_row : self.first_row + share]  # (N / W, L)
        full, rest = divmod(row_len - 1, num_steps)
        self._starts = [i * num_steps for i in range(full)]
        self._lengths = [num_steps] * full
        if rest:
            self._starts.append(full * num_steps)
            self._lengths.append(rest)

    def set_epoch(self, epoch: int) -> None:
        """Consecutive windows do not change between epochs."""

    def __len__(self) -> int:
        return len(self._starts)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, y)``, each ``(T, N)``; with ``world_size`` W, ``N`` is ``batch_size / W``."""
        start, steps = self._starts[i], self._lengths[i]
        window = _as_long(self.rows[:, start : start + steps + 1])  # (N, T + 1)
        return window[:, :-1].t().contiguous(), window[:, 1:].t().contiguous()  # (T, N), (T, N)

    def positions(self, i: int) -> torch.Tensor:
        """(T, N) int64: where batch ``i``'s targets sit in the indices: ``y = indices[pos]``."""
        start, steps = self._starts[i], self._lengths[i]
        row_len = self.rows.shape[1]
        rows = torch.arange(self.first_row, self.first_row + self.num_rows)[None, :] * row_len
        return rows + torch.arange(start + 1, start + steps + 1)[:, None]  # (1, N) + (T, 1)


class RandomBatches:
    """Random non-overlapping windows, a fresh order every epoch (d2l's ``data_iter_random``).

    The corpus is cut into ``(n - 1) // T`` examples starting at multiples of ``T``; each
    epoch shuffles them and groups ``N`` per batch. Windows are independent, so the hidden
    state is reset for every batch. With ``world_size`` W, rank ``r`` takes the examples
    ``[r N / W, (r + 1) N / W)`` of each global batch: a disjoint, fixed share, the same
    order on every rank (it depends on ``(seed, epoch)`` only).
    """

    carries_state = False

    def __init__(
        self,
        indices: Indices,
        batch_size: int,
        num_steps: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        check_length(len(indices), batch_size, num_steps)
        check_share(batch_size, rank, world_size)
        self.indices, self.batch_size, self.num_steps, self.seed = (
            indices,
            batch_size,
            num_steps,
            seed,
        )
        share = batch_size // world_size
        self._share = slice(rank * share, (rank + 1) * share)
        self.num_examples = (len(indices) - 1) // num_steps
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """The order of epoch ``epoch`` (drawn once per epoch)."""
        if getattr(self, "epoch", None) == epoch:
            return
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        self.order = torch.randperm(self.num_examples, generator=generator)
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_examples // self.batch_size

    def _starts(self, i: int) -> torch.Tensor:
        """(N / W,) where this rank's windows of batch ``i`` start."""
        batch = self.order[i * self.batch_size : (i + 1) * self.batch_size]
        return batch[self._share] * self.num_steps

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, y)``, each ``(T, N)``; with ``world_size`` W, ``N`` is ``batch_size / W``."""
        starts = self._starts(i)
        offsets = torch.arange(self.num_steps)
        positions = offsets[:, None] + starts[None, :]  # (T, N)
        if isinstance(self.indices, torch.Tensor):
            return self.indices[positions], self.indices[positions + 1]
        # an array (or memmap): read only the batch's T + 1 characters per row
        window = _as_long(self.indices[np.arange(self.num_steps + 1)[:, None] + starts.numpy()])
        return window[:-1], window[1:]  # (T, N), (T, N)

    def positions(self, i: int) -> torch.Tensor:
        """(T, N) int64: where batch ``i``'s targets sit in the indices: ``y = indices[pos]``."""
        return torch.arange(self.num_steps)[:, None] + self._starts(i)[None, :] + 1


def make_batches(
    indices: Indices,
    batch_size: int,
    num_steps: int,
    sampling: str,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
) -> ConsecutiveBatches | RandomBatches:
    """The batcher named by ``sampling`` (``consecutive`` or ``random``); with
    ``world_size`` W > 1, rank ``rank``'s share of each batch (``batch_size / W`` rows)."""
    if sampling == "consecutive":
        return ConsecutiveBatches(indices, batch_size, num_steps, rank, world_size)
    if sampling == "random":
        return RandomBatches(indices, batch_size, num_steps, seed, rank, world_size)
    raise SettingError(f"unknown {{sampling}} {sampling!r}; choose consecutive or random")
