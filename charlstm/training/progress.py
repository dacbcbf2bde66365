"""Progress a person can follow: a tqdm bar on a terminal, plain lines anywhere else.

On a terminal the bar runs over optimizer steps with the loss, characters per second and
the time left. When the output is a log file, CI or ``nohup`` (no terminal), the same
figures are printed as one plain line at least every ``CHARLSTM_PROGRESS_EVERY`` seconds
(30 by default), so that a long epoch is never minutes of silence.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable
from typing import Any

from tqdm import tqdm

from charlstm.config import TrainConfig

#: Seconds between plain progress lines when the output is not a terminal.
LINE_SECONDS = 30.0


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


class ProgressMeter:
    """Shows training progress; ``bar``: a tqdm bar (None: when stderr is a terminal)."""

    def __init__(
        self,
        config: TrainConfig,
        steps_per_epoch: int,
        log: Callable[[str], None],
        bar: bool | None = None,
    ) -> None:
        planned = config.epochs * steps_per_epoch
        self.total = min(planned, config.max_steps) if config.max_steps else planned
        self.minutes = config.time_limit
        self.log = log
        self.every = float(os.environ.get("CHARLSTM_PROGRESS_EVERY", LINE_SECONDS))
        self.started = time.perf_counter()
        self.last_line = self.started
        self.first_step: int | None = None
        use_bar = sys.stderr.isatty() if bar is None else bar
        self.bar: Any = (
            tqdm(total=self.total, unit="step", leave=False, dynamic_ncols=True)
            if use_bar
            else None
        )

    def _seconds_left(self, step: int, trained_seconds: float) -> float:
        now = time.perf_counter()
        done = step - (self.first_step or 0)
        rate = done / max(now - self.started, 1e-9)  # steps per second in this process
        left = (self.total - step) / rate if rate > 0 else math.inf
        if self.minutes:
            left = min(left, max(0.0, 60 * self.minutes - trained_seconds))
        return left

    def update(self, progress: Any, loss: float, lr: float) -> None:
        """After each optimizer step (``progress``: the trainer's Progress)."""
        if self.first_step is None:
            self.first_step = progress.step - 1
        chars_per_sec = progress.chars / max(progress.seconds, 1e-9)
        if self.bar is not None:
            self.bar.n = progress.step
            self.bar.set_postfix(
                loss=f"{loss:.3f}",
                chars_per_s=f"{chars_per_sec:,.0f}",
                lr=f"{lr:.2g}",
                refresh=False,
            )
            self.bar.refresh()
            return
        now = time.perf_counter()
        if now - self.last_line < self.every:
            return
        self.last_line = now
        left = self._seconds_left(progress.step, progress.trained_seconds)
        self.log(
            f"step {progress.step:,}/{self.total:,} (epoch {progress.epoch + 1}): loss {loss:.4f}, "
            f"{chars_per_sec:,.0f} chars/s, lr {lr:.3g}, "
            + (f"{_duration(left)} left" if math.isfinite(left) else "time left unknown")
        )

    def pause(self) -> None:
        """Before other output (scores, samples): clear the bar's line."""
        if self.bar is not None:
            self.bar.clear()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
