"""A held-out fraction's curve against the law's prediction, two naive baselines and the
parts of the law's error (paper 1's test: fit the smaller fractions, predict the larger).

The baselines say whether the law predicts anything a reader could not have guessed:

- copy: the largest fitted fraction's measured test curve, as it is;
- linear: the two largest fitted fractions' test curves, extrapolated linearly in the
  fraction to the held-out one, checkpoint by checkpoint.

Both use the seed means at each checkpoint, interpolated in log tokens onto the held-out
curve's checkpoints (held at their end values beyond their own checkpoints).

The decomposition splits the law's mean signed error on the test loss into its train term
(law train - observed train) and its gap term (law gap - observed test - train), which add
up to it, and the train term further into the floor's part (the law's C(d) minus the floor
stage 1 fitted to the held-out curve itself) and the rest (the power term, and stage 1's own
misfit); when stage 1's floor is not a loss (below 0 or above the measured train losses: it
traded against its power term) there is nothing to split against, and a note says so.
"""

from __future__ import annotations

import numpy as np

from mixer.analysis.scaling import Curve, curve_errors, law, law_coefficients


def holdout_report(p: dict, unit: float, held: Curve, fitted: list[Curve], stage1: dict | None) -> dict:
    """Everything fit.json's `holdout` holds: errors over the whole curve (every checkpoint),
    onset of overfitting, the naive baselines (and whether the law beats each), the error's parts."""
    out = curve_errors(p, held, unit, points=True) | {"points": int(np.isfinite(held.test).sum())}
    out["onset"] = holdout_onset(p, held, unit)
    law_mean = out["test"]["mean_abs_rel_error_pct"] if out["test"] else None
    out["baselines"] = []
    for b in naive_baselines(fitted, held):
        b["law_beats"] = law_mean is not None and b["mean_abs_rel_error_pct"] is not None and \
            law_mean < b["mean_abs_rel_error_pct"]
        out["baselines"].append(b)
    out["law_beats_baselines"] = bool(out["baselines"]) and all(b["law_beats"] for b in out["baselines"])
    out["decomposition"] = error_decomposition(p, unit, held, stage1)
    return out


def holdout_onset(p: dict, c: Curve, unit: float = 1.0) -> dict:
    """Onset of overfitting (tokens where the test loss stops falling) on a held-out curve: observed,
    the checkpoint with the lowest measured test loss unless it is the last one (then none seen
    yet); predicted, the minimum of the law's test loss on a fine grid up to 10x the curve's last
    checkpoint (none if it still falls there). Checkpoints are coarse, so the observed onset is
    known to within one checkpoint interval."""
    T, y = mean_curve(c)
    observed = None
    if len(y) > 1 and int(np.argmin(y)) < len(y) - 1:
        observed = float(T[int(np.argmin(y))])
    grid = np.geomspace(float(T.min()), 10 * float(T.max()), 2000)
    pred = law(p, grid, c.fraction, unit)["test"]
    i = int(np.argmin(pred))
    predicted = None if i == len(grid) - 1 else float(grid[i])
    return {"observed_tokens": observed, "predicted_tokens": predicted, "last_checkpoint_tokens": float(T.max())}


def mean_curve(c: Curve, key: str = "test") -> tuple[np.ndarray, np.ndarray]:
    """The seed mean of a curve's measured losses at each distinct token count."""
    y = getattr(c, key)
    ok = np.isfinite(y)
    T, inv = np.unique(c.tokens[ok], return_inverse=True)
    return T.astype(float), np.bincount(inv, weights=y[ok]) / np.bincount(inv)


def naive_baselines(fitted: list[Curve], held: Curve) -> list[dict]:
    """The copy and linear baselines' test-loss errors (%) on the held-out curve."""
    above = sorted(fitted, key=lambda c: c.fraction)
    ok = np.isfinite(held.test)
    T, y = held.tokens[ok].astype(float), held.test[ok]
    if not above or not len(y):
        return []

    def at(c: Curve) -> np.ndarray:
        t, v = mean_curve(c)
        return np.interp(np.log(T), np.log(t), v)

    out = []
    top = above[-1]
    out.append(_score("copy", f"the measured test curve of fraction {top.fraction:g} (the largest fitted)",
                      at(top), y))
    if len(above) >= 2:
        low = above[-2]
        lo_y, hi_y = at(low), at(top)
        pred = hi_y + (held.fraction - top.fraction) * (hi_y - lo_y) / (top.fraction - low.fraction)
        out.append(_score("linear", f"fractions {low.fraction:g} and {top.fraction:g} extrapolated linearly in the "
                                    f"fraction to {held.fraction:g}", pred, y))
    return out


def _score(name: str, what: str, pred: np.ndarray, y: np.ndarray) -> dict:
    rel = np.abs(pred - y) / y * 100
    return {"name": name, "what": what, "mean_abs_rel_error_pct": float(rel.mean()),
            "max_abs_rel_error_pct": float(rel.max())}


def error_decomposition(p: dict, unit: float, held: Curve, stage1: dict | None) -> dict | None:
    """Mean signed errors (law - observed, nats) over the checkpoints with both losses: test =
    train + gap exactly; train = floor + the rest, the floor's part judged against stage 1's
    floor for the held-out fraction (None when stage 1 has none)."""
    both = np.isfinite(held.test) & np.isfinite(held.train)
    if not both.any():
        return None
    pred = law(p, held.tokens[both], held.fraction, unit)
    tr = float(np.mean(pred["train"] - held.train[both]))
    gap = float(np.mean(pred["gap"] - (held.test[both] - held.train[both])))
    level = float(np.mean(held.test[both]))
    out = {"points": int(both.sum()), "test_nats": tr + gap, "train_nats": tr, "gap_nats": gap,
           "floor_nats": None, "train_rest_nats": None, "mean_test_loss": level}
    if stage1 and stage1.get("train"):
        c1 = stage1["train"]["C"]
        if 0 <= c1 <= float(np.nanmin(held.train)):
            floor = law_coefficients(p, held.fraction, unit)["C"] - c1
            out["floor_nats"], out["train_rest_nats"] = float(floor), tr - float(floor)
        else:  # stage 1 traded its floor against its power term: no measured floor to compare with
            out["note"] = (f"stage 1's floor for fraction {held.fraction:g} is {c1:.4g}, not a loss below the measured "
                           "train losses: the train term is not split into floor and rest")
    return out
