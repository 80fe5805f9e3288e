"""Learning-rate schedules, trainer-neutral, and the paper's learning-rate regime.

The paper (Finetuner's Fallacy, appendix B) pretrains with a cosine from 4e-4 to 4e-5 laid
out over 2T tokens and stops at 200B, so every checkpoint it finetunes, the last included,
is taken at ~98% of the peak rate: intermediate and final checkpoints are comparable, and
none is annealed. It finetunes at a constant rate after warmup, from a grid of
{1e-5, 4e-5, 1e-4}, i.e. 0.026-0.26x the rate pretraining had reached. mixer keeps those
ratios, not the absolute rates, so that a model whose pretraining rate differs (the CPU
presets train at 3e-3) is finetuned in the same regime relative to where it stopped.

`lr_at` is the one definition of the schedules: the runner uses it to record the rate at
each checkpoint in run.json, and the LitGPT launcher uses it to drive training.
"""

from __future__ import annotations

import math

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Schedule:
    """A learning-rate schedule, the one place it is defined: adding one is an entry in
    SCHEDULES (the CLI's --schedule choices, the runner and the LitGPT launcher read it)."""
    after_warmup: Callable[..., float]  # (step, lr, min_lr, warmup, steps, horizon, decay_fraction) -> rate
    finetune: bool  # offered by `mixer train finetune|replay --schedule`
    floor: Callable[[float, float | None], float] = lambda lr, min_lr: lr  # the rate it ends at, from lr, --min-lr
    records: tuple[str, ...] = ()  # its own settings recorded in run.json's hparams


def _cosine(step, lr, min_lr, warmup, steps, horizon, decay_fraction):
    total = horizon or steps
    if step >= total:
        return min_lr
    ratio = (step - warmup) / max(1, total - warmup)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (lr - min_lr)


def _wsd(step, lr, min_lr, warmup, steps, horizon, decay_fraction):
    decay_start = steps - int(decay_fraction * steps)
    if step < decay_start:
        return lr
    return lr + (min_lr - lr) * min(1.0, (step - decay_start) / max(1, steps - decay_start))


SCHEDULES: dict[str, Schedule] = {
    # pretraining's: a half cosine from lr to min_lr ending at `horizon` (default the run's end)
    "cosine": Schedule(_cosine, finetune=False),
    # the paper's finetuning: lr after warmup
    "constant": Schedule(lambda step, lr, *rest: lr, finetune=True),
    # warmup-stable-decay: lr, then linear to min_lr (default lr/10) over the last decay_fraction
    "wsd": Schedule(_wsd, finetune=True, floor=lambda lr, min_lr: min_lr if min_lr is not None else lr / 10,
                    records=("decay_fraction",)),
}
FINETUNE_SCHEDULES = tuple(name for name, s in SCHEDULES.items() if s.finetune)

# Appendix B.1: cosine 4e-4 -> 4e-5 over 2T tokens, cut at 200B.
PAPER_PEAK_LR, PAPER_MIN_LR = 4e-4, 4e-5
PAPER_HORIZON_TOKENS, PAPER_PRETRAIN_TOKENS = 2_000_000_000_000, 200_000_000_000
DEFAULT_HORIZON = PAPER_HORIZON_TOKENS / PAPER_PRETRAIN_TOKENS  # 10: the horizon as a multiple of the run
# Appendix B.2: the finetuning grid (constant after warmup).
PAPER_FINETUNE_LRS = (1e-5, 4e-5, 1e-4)
PAPER_WARMUPS = (50, 100, 200)


def lr_at(step: float, lr: float, min_lr: float, warmup: float, steps: float, kind: str = "cosine",
          horizon: float | None = None, decay_fraction: float = 0.2) -> float:
    """The rate after `step` of `steps` (any unit, the same for all four: steps or iterations).

    cosine: linear warmup, then a half cosine from lr to min_lr that ends at `horizon`
    (default: the run's end; longer: the run stops part-way down, as the paper's does).
    constant: warmup, then lr. wsd: warmup, lr, then linear to min_lr over the last
    `decay_fraction` of the run. Identical to LitGPT's get_lr for a cosine without horizon.
    """
    if kind not in SCHEDULES:
        raise ValueError(f"schedule {kind!r}: expected one of {', '.join(SCHEDULES)}")
    if step < warmup:
        return lr * step / warmup
    return SCHEDULES[kind].after_warmup(step, lr, min_lr, warmup, steps, horizon, decay_fraction)


def paper_final_lr() -> float:
    """The rate the paper's pretraining had reached at 200B tokens (~3.912e-4, 98% of peak)."""
    return lr_at(PAPER_PRETRAIN_TOKENS, PAPER_PEAK_LR, PAPER_MIN_LR, 0, PAPER_PRETRAIN_TOKENS,
                 horizon=PAPER_HORIZON_TOKENS)


# The finetuning grid as multiples of the rate pretraining ended at: 0.0256, 0.1023, 0.2556.
PAPER_LR_RATIOS = tuple(x / paper_final_lr() for x in PAPER_FINETUNE_LRS)


def run_lr(meta: dict, step: int) -> float | None:
    """The rate a run (run.json) was training at when it had taken `step` optimizer steps;
    None when run.json lacks what the schedule needs (a run from an older mixer)."""
    h = meta.get("hparams") or {}
    try:
        lr, steps, warmup = float(h["lr"]), int(h["steps"]), float(h.get("warmup") or 0)
    except (KeyError, TypeError, ValueError):
        return None
    kind = h.get("schedule") or "cosine"
    min_lr = float(h.get("min_lr") if h.get("min_lr") is not None else lr)
    horizon = h.get("horizon_steps")
    if horizon is None and kind == "cosine" and h.get("schedule_tokens") and meta.get("tokens"):
        horizon = float(h["schedule_tokens"]) * steps / float(meta["tokens"])  # tokens -> steps
    return lr_at(step, lr, min_lr, warmup, steps, kind, horizon, float(h.get("decay_fraction") or 0.2))
