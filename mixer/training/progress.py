"""One status line for a training run: step, loss, tokens per second and time left.

Trainers report each optimizer step they log (`StepLine.update`); the line goes to stderr,
rewritten in place on a terminal and, when stderr is a file or a pipe (a job log, the
study's log), printed at most every `every` seconds so a log stays readable. Why not tqdm:
the numbers come from the trainer's own log lines (LitGPT prints them from its process), not
from a loop mixer drives, and a step's tokens/s is the trainer's measure, not tqdm's rate.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from mixer.units import format_count


def _clock(seconds: float) -> str:
    s = max(0, int(round(seconds)))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class StepLine:
    def __init__(self, name: str, total_steps: int, tokens_per_step: int, stream: TextIO | None = None,
                 every: float = 30.0, clock=time.monotonic) -> None:
        self.name, self.total, self.tokens_per_step = name, max(1, total_steps), tokens_per_step
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.every, self.clock = every, clock
        self.first: tuple[int, float] | None = None  # (step, time) of the first step seen: startup excluded
        self.last_shown: float | None = None
        self.last_step = 0
        self.shown_any = False

    def text(self, step: int, loss: float | None, now: float) -> str:
        first_step, t0 = self.first or (step, now)
        done, elapsed = step - first_step, now - t0
        rate = done * self.tokens_per_step / elapsed if elapsed > 0 and done > 0 else 0.0
        eta = (self.total - step) * elapsed / done if done > 0 else None
        parts = [f"{self.name}: step {step:,}/{self.total:,}"]
        if loss is not None:
            parts.append(f"loss {loss:.4f}")
        if rate:
            parts.append(f"{format_count(rate)} tok/s")
        if eta is not None:
            parts.append(f"ETA {_clock(eta)}")
        return " | ".join(parts)

    def update(self, step: int, loss: float | None) -> None:
        """A logged step; shown now on a terminal, else when `every` seconds passed since the last."""
        now = self.clock()
        if self.first is None:
            self.first = (step, now)
        self.last_step = step
        if not self.tty and self.last_shown is not None and now - self.last_shown < self.every and step < self.total:
            return
        self.last_shown = now
        line = self.text(step, loss, now)
        if self.tty:
            self.stream.write(f"\r\033[K{line}")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
        self.shown_any = True

    def close(self) -> None:
        if self.tty and self.shown_any:
            self.stream.write("\n")
            self.stream.flush()
