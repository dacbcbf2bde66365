"""Data parallelism under PyTorch's own launcher, ``torchrun``: the job's processes, their
process group, and the few collectives a run needs (``torch.distributed``, nothing home-made).

``torchrun --standalone --nproc_per_node=W -m charlstm train CORPUS ...`` starts W
processes with ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK`` in their environment;
:func:`setup` joins them in one process group (gloo on the CPU, NCCL for CUDA tensors, the
GPU picked by ``LOCAL_RANK``). Without torchrun the world is one process and nothing here
communicates. The training step itself is synchronised by ``DistributedDataParallel``
(:mod:`charlstm.training.loop`); this module adds what DDP does not do:

- :func:`agree`: the global per-step loss (mean over ranks), the training time, and whether
  any rank got SIGINT / SIGTERM, in one small all-reduce per step, so every rank stops at
  the same step and takes the same time-based decisions;
- :func:`gather_rows` / :meth:`World.rows`: the carried hidden state of all ``N`` rows on
  every rank for a checkpoint (rank ``r`` trains rows ``[r N / W, (r + 1) N / W)``), and
  a rank's share of a checkpoint's rows on resume, so that a run moves between world sizes;
- :func:`sum_values`: sums of held-out losses scored in parts;
- :func:`agreed` / :func:`settle`: every rank's setup succeeds or fails together, and a
  failure is one line (the lowest failing rank's); the others leave quietly with its exit
  code.

Rank 0 alone writes files and prints; the other ranks' standard output goes to
``os.devnull`` (their standard error stays, for a failure of their own).
"""

from __future__ import annotations

import atexit
import gc
import importlib
import os
import signal
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from charlstm.errors import CharLSTMError

#: How long a rank waits for the others in one collective before the job fails.
TIMEOUT = timedelta(minutes=30)


@dataclass(frozen=True)
class World:
    """This process's place in the job: ``rank`` of ``size`` processes; ``local_rank`` on
    its machine; ``restarts``: how often torchrun has restarted the job (``--max-restarts``)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    restarts: int = 0
    max_restarts: int = 0
    job: str | None = None  # TORCHELASTIC_RUN_ID: the same for every attempt of one job

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def main(self) -> bool:
        """Rank 0: the one process that writes files and prints."""
        return self.rank == 0

    def share(self, count: int) -> tuple[int, int]:
        """This rank's contiguous part ``[lo, hi)`` of ``count`` items (equal parts when
        ``size`` divides ``count``; otherwise some ranks have one more)."""
        return self.rank * count // self.size, (self.rank + 1) * count // self.size

    def rows(self, tensor: torch.Tensor) -> torch.Tensor:
        """This rank's rows (dim 1) of a state tensor of all ``N`` rows: ``(L, N, H)`` ->
        ``(L, N / W, H)``."""
        lo, hi = self.share(tensor.shape[1])
        return tensor[:, lo:hi]


def _env_int(name: str, default: int = 0) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError as err:
        raise CharLSTMError(
            f"the environment's {name}={os.environ[name]!r} is not a number"
        ) from err


def from_env() -> World:
    """The world torchrun describes in the environment (one process without torchrun)."""
    if "WORLD_SIZE" not in os.environ or "RANK" not in os.environ:
        return World()
    return World(
        rank=_env_int("RANK"),
        size=_env_int("WORLD_SIZE", 1),
        local_rank=_env_int("LOCAL_RANK"),
        restarts=_env_int("TORCHELASTIC_RESTART_COUNT"),
        max_restarts=_env_int("TORCHELASTIC_MAX_RESTARTS"),
        job=os.environ.get("TORCHELASTIC_RUN_ID"),
    )


def setup() -> World:
    """Join the job's process group (once per process) and return this process's world.

    The backend is gloo for CPU tensors and, where CUDA is available, NCCL for CUDA
    tensors, each rank on GPU ``LOCAL_RANK``. Ranks other than 0 stop printing to stdout.
    """
    world = from_env()
    if not world.distributed or dist.is_initialized():
        return world
    backend = "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(world.local_rank % torch.cuda.device_count())
        backend = "cpu:gloo,cuda:nccl"
    importlib.import_module("torch.distributed.nn")  # before the group exists: see leave()
    # torchrun's store outlives a restart: without a prefix per attempt a restarted rank
    # may read the address a dead rank published and fail to connect (gloo).
    store, rank, size = next(dist.rendezvous("env://", timeout=TIMEOUT))
    store = dist.PrefixStore(f"charlstm/attempt-{world.restarts}", store)
    dist.init_process_group(backend, store=store, rank=rank, world_size=size, timeout=TIMEOUT)
    atexit.register(leave)
    if not world.main:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115  (for the life of the process)
    return world


def leave() -> None:
    """Destroy the process group and join its threads while the interpreter is whole.

    :func:`setup` registers this with :mod:`atexit`: it runs on every way out (a finished
    run, a failure, another rank's failure). Left to the interpreter's teardown, a gloo
    worker thread that is still releasing the tensors of the last collective (it needs the
    GIL for that) is killed mid-destructor: the process aborts with ``terminate called
    without an active exception`` after the run has finished, and torchrun reports the job
    failed (about one 2-process run in 30). The threads end only with the last reference to
    the group, so first ``gc.collect()`` frees what reference cycles still hold (a failed
    run's traceback keeps its frames, and its DDP model). And DDP's first use imports
    ``torch.distributed.nn``, whose functions keep the default group in their default
    arguments when imported after it exists: :func:`setup` imports it before it makes one.
    """
    if dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()


def silent(line: str) -> None:
    """The log of a rank other than 0: it prints nothing."""


def agree(
    world: World, values: Sequence[float], signum: int | None
) -> tuple[list[float], int | None]:
    """Each of ``values`` averaged over the ranks, and the stop signal of any rank (SIGINT
    before SIGTERM), in one all-reduce: every rank gets the same answer."""
    if not world.distributed:
        return list(values), signum
    flags = [float(signum == signal.SIGINT), float(signum == signal.SIGTERM)]
    total = torch.tensor([*values, *flags], dtype=torch.float64)
    dist.all_reduce(total)
    *sums, interrupts, terminates = total.tolist()
    agreed = signal.SIGINT if interrupts else signal.SIGTERM if terminates else None
    return [value / world.size for value in sums], agreed


def sum_values(world: World, values: Sequence[float]) -> list[float]:
    """Each of ``values`` summed over the ranks (float64)."""
    if not world.distributed:
        return list(values)
    total = torch.tensor(list(values), dtype=torch.float64)
    dist.all_reduce(total)
    return total.tolist()


def gather_rows(world: World, tensor: torch.Tensor) -> torch.Tensor:
    """All ranks' rows (dim 1) side by side, in rank order: ``(L, N / W, H)`` -> ``(L, N, H)``."""
    if not world.distributed:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(world.size)]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=1)


def lost_peer(err: RuntimeError) -> bool:
    """Whether ``err`` is a collective that failed because another process died or hung."""
    text = str(err)
    signs = ("gloo", "NCCL", "Connection reset by peer", "Connection closed by peer")
    return isinstance(err, getattr(dist, "DistError", ())) or any(sign in text for sign in signs)


class OtherRankFailed(SystemExit):
    """Raised on the ranks that leave quietly because another rank's failure is the line the
    job prints (a ``SystemExit`` with that failure's exit code)."""


def exit_code(err: BaseException) -> int:
    return err.exit_code if isinstance(err, CharLSTMError) else 1


def settle(world: World, failure: BaseException | None) -> None:
    """One agreement: every rank tells whether it failed (one collective).

    If any rank failed, every rank stops: the lowest failing rank returns (to raise its own
    error, the job's one line); the others raise :class:`OtherRankFailed` with its exit
    code. A failure already settled in an agreement is not settled again.
    """
    if not world.distributed or getattr(failure, "_settled", False):
        return
    outcomes: list[int | None] = [None] * world.size
    dist.all_gather_object(outcomes, None if failure is None else exit_code(failure))
    failed = [rank for rank, code in enumerate(outcomes) if code is not None]
    if not failed:
        return
    if failure is not None and world.rank == failed[0]:
        failure._settled = True  # type: ignore[attr-defined]
        return
    raise OtherRankFailed(outcomes[failed[0]])


@contextmanager
def agreed(world: World) -> Iterator[None]:
    """Run the block on every rank, then :func:`settle` its outcome.

    A rank that fails before it reaches the block settles its failure instead (call
    :func:`settle` on the way out), so that every rank takes part in the same agreements.
    No other collective may run inside the block (a failed rank would never reach it).
    """
    try:
        yield
    except Exception as err:
        settle(world, err)
        raise
    settle(world, None)


def leave_quietly(world: World, err: CharLSTMError) -> None:
    """For a failure every rank met alike (an agreed stop, a non-finite global loss): rank 0
    reports it; the others leave without a word, with the same exit code."""
    if not world.main:
        raise OtherRankFailed(err.exit_code) from None
