"""The papers' metrics (docs/science.md, metrics) as pure functions of losses and token counts.

Paper 2's three-stage pipeline (pretrain -> post-train on D_post -> finetune on a new task
D_ft) is scored by four losses, each at the checkpoint early stopping chose:

    L_im   D_post test loss of the post-trained model (immediately after post-training)
    L_ft   D_ft test loss of the finetuned model (how well the new task was learnt)
    L_ret  D_post test loss of the finetuned model (what the post-trained capability kept)
    L_pre  general (pretraining) validation loss of the finetuned model

The retention frontier is (L_ft, L_ret) and the pretraining one (L_pre, L_ret): lower-left
is better on both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np


def best_loss(losses: Sequence[float | None]) -> float | None:
    """Early stopping's pick: the lowest loss over checkpoints (None where nothing was evaluated)."""
    have = [x for x in losses if x is not None and math.isfinite(x)]
    return min(have) if have else None


def relative_gain(npt_loss: float, spt_loss: float) -> float:
    """R = 100 * (L_NPT->FT - L_SPT->FT) / L_NPT->FT, in percent; positive when SPT helps."""
    return 100.0 * (npt_loss - spt_loss) / npt_loss


@dataclass(frozen=True)
class Multiplier:
    """T_NPT / T_SPT. `bound` is "=" when the curves cross inside the measured range, ">=" when
    SPT is already better at its first point (it may be better earlier still), "<" when it never
    reaches the target (it would need more tokens than measured)."""

    value: float
    bound: str

    def __str__(self) -> str:
        return f"{'' if self.bound == '=' else self.bound}{self.value:.3g}x"


def tokens_to_reach(tokens: Sequence[float], losses: Sequence[float], target: float) -> tuple[float, str]:
    """Fewest tokens at which a loss curve reaches `target`, interpolated linearly in log tokens
    between the checkpoints around the first crossing. Returns (tokens, bound) as Multiplier."""
    t, how, _ = crossing(tokens, losses, target)
    return t, how


def crossing(tokens: Sequence[float], losses: Sequence[float], target: float) -> tuple[float, str, tuple[float, ...]]:
    """tokens_to_reach, and the checkpoints (tokens) the answer rests on: the two around the
    crossing, the first one when it is a lower bound, the last one when never reached."""
    T = np.asarray(tokens, float)
    L = np.asarray(losses, float)
    order = np.argsort(T)
    T, L = T[order], L[order]
    hit = np.nonzero(L <= target)[0]
    if len(hit) == 0:
        return float(T[-1]), ">", (float(T[-1]),)
    i = int(hit[0])
    if i == 0:
        return float(T[0]), "<=", (float(T[0]),)
    t0, t1, l0, l1 = math.log(T[i - 1]), math.log(T[i]), L[i - 1], L[i]
    return float(math.exp(t0 + (l0 - target) / (l0 - l1) * (t1 - t0))), "=", (float(T[i - 1]), float(T[i]))


def compute_multiplier(npt_tokens: float, npt_loss: float, spt_tokens: Sequence[float],
                       spt_losses: Sequence[float]) -> Multiplier:
    """T_NPT / T_SPT: how many times fewer pretraining tokens SPT->FT needs to match NPT->FT."""
    t_spt, how = tokens_to_reach(spt_tokens, spt_losses, npt_loss)
    bound = {"=": "=", "<=": ">=", ">": "<"}[how]
    return Multiplier(npt_tokens / t_spt, bound)


def saturation(tokens: Sequence[float], losses: Sequence[float], spread: float | None) -> dict | None:
    """Has a loss curve stopped improving? Its improvement per doubling of tokens over its last
    step (the two largest budgets) against `spread`, the seed spread of its last loss: saturated
    when the curve improves by less than the seeds disagree (None: fewer than 2 budgets)."""
    T = np.asarray(tokens, float)
    L = np.asarray(losses, float)
    if len(T) < 2:
        return None
    order = np.argsort(T)
    (t0, t1), (l0, l1) = T[order][-2:], L[order][-2:]
    per_doubling = float((l0 - l1) / math.log2(t1 / t0))
    return {"from_tokens": float(t0), "to_tokens": float(t1), "gain_per_doubling": per_doubling, "spread": spread,
            "saturated": None if spread is None else bool(per_doubling < spread)}


def gap_closed(small_npt: float, small_spt: float, large_npt: float) -> float:
    """100 * (L_small,NPT - L_small,SPT) / (L_small,NPT - L_large,NPT), all after finetuning;
    above 100 the small SPT model beats the large NPT one."""
    return 100.0 * (small_npt - small_spt) / (small_npt - large_npt)


def forgetting(general_before: float, general_after: float) -> float:
    """Rise of the general held-out loss during finetuning (positive = forgot)."""
    return general_after - general_before


@dataclass(frozen=True)
class Spread:
    mean: float
    std: float | None  # sample standard deviation over seeds; None for one seed
    n: int

    def __str__(self) -> str:
        return f"{self.mean:.4g}" if self.std is None else f"{self.mean:.4g} ± {self.std:.2g}"

    def to_dict(self) -> dict:
        return {"mean": self.mean, "std": self.std, "n": self.n}


def mean_spread(values: Sequence[float]) -> Spread:
    """Mean and spread over seeds (ddof=1: seeds are a sample of possible runs)."""
    x = np.asarray([v for v in values if v is not None], float)
    if len(x) == 0:
        raise ValueError("mean_spread of no values")
    return Spread(float(x.mean()), float(x.std(ddof=1)) if len(x) > 1 else None, int(len(x)))


def pareto_front(xs: Sequence[float], ys: Sequence[float]) -> list[int]:
    """Indices of the points no other point beats on both axes (lower is better), by x."""
    order = sorted(range(len(xs)), key=lambda i: (xs[i], ys[i]))
    front, best_y = [], math.inf
    for i in order:
        if ys[i] < best_y:
            front.append(i)
            best_y = ys[i]
    return front


@dataclass(frozen=True)
class StageLosses:
    """Paper 2's losses of one pretrain -> post-train -> finetune chain (nats)."""

    L_im: float | None
    L_ft: float | None
    L_ret: float | None
    L_pre: float | None

    @property
    def retention_loss(self) -> float | None:
        """L_ret - L_im: how much of the post-trained capability finetuning on D_ft cost."""
        return None if self.L_ret is None or self.L_im is None else self.L_ret - self.L_im

    def to_dict(self) -> dict:
        return {"L_im": self.L_im, "L_ft": self.L_ft, "L_ret": self.L_ret, "L_pre": self.L_pre,
                "retention_loss": self.retention_loss}


def stage_losses(post: dict[str, float | None], ft: dict[str, float | None], post_test: str, ft_test: str,
                 general: str | None) -> StageLosses:
    """Paper 2's losses from two evaluated checkpoints, each a {held-out set: loss} map: `post`
    the post-trained model's chosen checkpoint, `ft` the finetuned model's; `post_test` names
    D_post's test set, `ft_test` D_ft's, `general` the pretraining validation set."""
    return StageLosses(L_im=post.get(post_test), L_ft=ft.get(ft_test), L_ret=ft.get(post_test),
                       L_pre=ft.get(general) if general else None)
