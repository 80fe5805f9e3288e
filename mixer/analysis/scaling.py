"""The overfitting scaling law of docs/science.md (paper 1, section 5 and appendix D), fitted to runs.

    L_train(T, d) = A_train * T^b_train(d) + C_train(d)
    L_gap(T, d)   = A_gap(d) * T^b_gap(d)            L_test = L_train + L_gap
    b_x(d)        = d * b_x,s + (1 - d) * b_x,g
    A_gap(d)      = a1 * d^a2 * exp(a3 * d)
    C_train(d)    = k0 - k1 * log(d + k2) - k3 * d

Units are part of the model, not a detail: with a shared A_train and exponents that vary
with d, rescaling T changes the family itself. Here d is a fraction (0.02, not 2) and T is
pretraining tokens divided by `token_unit`, the power of ten at or below the smallest
checkpoint (so T is 1..100 over a study, and A_train is the train power term's value at a
token count inside or just below the measured range); fit.json records both (UNITS).

The fit follows appendix D, in three stages, all minimising squared error in nats:

1. Per-fraction curves with shared exponents: L_train(T, d_i) = A_train T^b_train(d_i) + C_i
   over every fraction at once (one A_train, exponents linear in d, a floor C_i per
   fraction), and L_gap(T, d_i) = A_i T^b_gap(d_i) (exponents linear in d, an amplitude A_i
   per fraction). For fixed exponents the rest is linear least squares (variable
   projection), so the exponents are searched on a grid and then polished.
2. Shape checks: C_i against the log-linear C_train(d), A_i against the Gamma kernel
   A_gap(d), each reported with its residuals and degrees of freedom.
3. The joint law: all twelve parameters, bounded, from many seeded starts
   (mixer/analysis/joint_fit.py), on train losses at d > 0 and test losses at every fitted d.

NPT (d = 0) enters stages 1-3 only when its domain test loss falls with tokens: the law's
train term at d = 0 can only fall, so a rising NPT curve (general data that teaches nothing
of the domain) would pin the shared exponents. Otherwise it is fitted on its own, reported
beside the law, and `npt` says why. `warnings` lists, for a reader who reads nothing else,
everything that makes the law less than trustworthy: no convergence, parameters at a bound,
failed shape checks, unchecked shapes, NPT left out, a held-out curve the naive baselines
predict better (mixer/analysis/holdout.py).

`loss="huber-log"` replaces stage 3's squared error by a Huber loss on log-loss residuals
(Chinchilla's choice; a robustness option). Small studies degrade in steps: without
enough fractions the stage-1 curves are still fitted and forecast from, and `not_fitted`
says what is missing and why. Everything here is pure: arrays in, dicts out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize, minimize_scalar

from mixer.analysis.joint_fit import BOUNDS, LOSSES, PARAMS, fit_joint
from mixer.errors import UsageError

__all__ = ["BOUNDS", "PARAMS", "LOSSES", "Curve", "fit_law", "law", "law_coefficients", "curve_test",
           "onset_tokens", "token_unit"]

UNITS = {
    "fraction": "fraction of pretraining tokens from the domain (0.02 means 2%; not percent)",
    "tokens": "pretraining tokens divided by token_unit (T = tokens / token_unit)",
    "loss": "cross-entropy in nats per token on the domain splits",
    "log": "natural logarithm",
}
MIN_POINTS = 3  # a power law with a floor has 3 coefficients
# The gap kernel A_gap(d) has 3 coefficients: 4 fractions above 0 leave its shape check one
# degree of freedom. The floor C(d) has 4: with NPT (fraction 0) in the fit, 5 fractions leave
# its check one too; without NPT it is fitted through its 4 fractions, bounded, and said to be
# unchecked. So the joint law needs 4 fractions above 0 with a measured gap, NPT or not.
MIN_GAP_FRACTIONS = 4
MIN_FRACTIONS = MIN_GAP_FRACTIONS
STARTS = 64  # seeded starts of the joint fit
_TRAIN_EXPONENTS = (-3.0, -1e-3)  # a train loss falls with tokens
_GAP_EXPONENTS = (-3.0, 3.0)  # a gap may shrink or grow
# NPT enters the joint fit when its test loss falls with tokens: the least-squares slope in
# log tokens is below zero by more than this many standard errors.
NPT_FALL_SE = 2.0


@dataclass(frozen=True)
class Curve:
    """Observations of one fraction: domain losses at pretraining checkpoints (NaN = missing)."""

    fraction: float
    tokens: np.ndarray
    train: np.ndarray
    test: np.ndarray

    def target(self) -> np.ndarray:
        """What stage 1's train curve fits: the train loss, but at d = 0 the test loss (no domain
        data, no gap; the test split is what is forecast) and where no train loss was measured."""
        if self.fraction == 0 or np.isfinite(self.train).sum() < MIN_POINTS:
            return self.test
        return self.train


def token_unit(tokens: np.ndarray | list[float]) -> float:
    """The power of ten at or below the smallest checkpoint: the law's token unit."""
    t = np.asarray(tokens, float)
    t = t[np.isfinite(t) & (t > 0)]
    return float(10.0 ** math.floor(math.log10(t.min()))) if len(t) else 1.0


# ---- the law -----------------------------------------------------------------------------


def law(p: dict, tokens: np.ndarray | float, d: np.ndarray | float, unit: float = 1.0) -> dict[str, np.ndarray]:
    """L_train, L_gap and L_test of the joint law at `tokens` (divided by `unit`, the fit's
    token_unit) and fractions d (broadcast)."""
    T, d = np.asarray(tokens, float) / unit, np.asarray(d, float)
    b_tr = d * p["b_train_s"] + (1 - d) * p["b_train_g"]
    b_gp = d * p["b_gap_s"] + (1 - d) * p["b_gap_g"]
    c = p["k0"] - p["k1"] * np.log(d + p["k2"]) - p["k3"] * d
    train = p["A_train"] * T**b_tr + c
    with np.errstate(divide="ignore"):  # A_gap(0) = 0: no domain data, no gap
        a_gap = np.where(d > 0, p["a1"] * np.power(np.maximum(d, 1e-300), p["a2"]) * np.exp(p["a3"] * d), 0.0)
    gap = a_gap * T**b_gp
    return {"train": train, "gap": gap, "test": train + gap}


def law_coefficients(p: dict, d: float, unit: float = 1.0) -> dict:
    """The law at one fraction as a per-fraction curve: A T^b + C + G T^g, T = tokens / unit."""
    return {
        "A": p["A_train"], "b": d * p["b_train_s"] + (1 - d) * p["b_train_g"],
        "C": p["k0"] - p["k1"] * math.log(d + p["k2"]) - p["k3"] * d,
        "G": p["a1"] * d ** p["a2"] * math.exp(p["a3"] * d) if d > 0 else 0.0,
        "g": d * p["b_gap_s"] + (1 - d) * p["b_gap_g"], "unit": unit,
    }


def curve_test(c: dict, tokens: np.ndarray | float) -> np.ndarray:
    """A T^b + C + G T^g at `tokens` (divided by the curve's unit)."""
    T = np.asarray(tokens, float) / c.get("unit", 1.0)
    return c["A"] * T ** c["b"] + c["C"] + c["G"] * T ** c["g"]


def onset_tokens(c: dict) -> float | None:
    """Tokens where d L_test / dT turns positive, for A T^b + C + G T^g; None if never.

    Setting the derivative to zero gives T* = (A |b| / (G g))^(1 / (g - b)) in closed form
    (in the curve's unit, returned in tokens).
    """
    A, b, G, g = c["A"], c["b"], c["G"], c["g"]
    if G <= 0 or g <= 0:
        return None  # the gap does not grow: the test loss falls for ever
    if A <= 0 or b >= 0:
        return 0.0  # nothing falls: overfitting from the start
    return float(math.exp((math.log(A * -b) - math.log(G * g)) / (g - b)) * c.get("unit", 1.0))


# ---- stage 1: per-fraction curves, shared exponents ----------------------------------------


def _exponent_line(ds: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Exponents linear in d through `lo` at the smallest fraction and `hi` at the largest."""
    d0, d1 = float(ds.min()), float(ds.max())
    return np.full_like(ds, lo, dtype=float) if d1 == d0 else lo + (ds - d0) * (hi - lo) / (d1 - d0)


def _as_law_exponents(ds: np.ndarray, lo: float, hi: float) -> tuple[float, float]:
    """(b_s, b_g): the line's values at d = 1 and d = 0."""
    d0, d1 = float(ds.min()), float(ds.max())
    slope = 0.0 if d1 == d0 else (hi - lo) / (d1 - d0)
    return lo + (1 - d0) * slope, lo - d0 * slope


def _search(sse, box: tuple[float, float], two: bool, n: int) -> tuple[float, float]:
    """Minimise sse(lo, hi) over exponents in `box`: grid (vectorised), then Nelder-Mead."""
    grid = np.linspace(*box, n)
    if two:
        lo, hi = (g.ravel() for g in np.meshgrid(grid, grid, indexing="ij"))
    else:
        lo = hi = grid
    i = int(np.argmin(sse(lo, hi)))
    x0 = np.array([lo[i], hi[i]])
    clip = lambda x: np.clip(x, *box)  # noqa: E731
    f = (lambda x: float(sse(*[np.atleast_1d(v) for v in clip(x)])[0])) if two else (
        lambda x: float(sse(np.atleast_1d(clip(x)[0]), np.atleast_1d(clip(x)[0]))[0]))
    # Bounded simplex: an optimum on the box's edge (a curve that barely falls) ends there
    # instead of crawling along it for thousands of steps.
    res = minimize(f, x0 if two else x0[:1], method="Nelder-Mead", bounds=[box] * (2 if two else 1),
                   options={"xatol": 1e-9, "fatol": 1e-16, "maxiter": 1000})
    x = clip(res.x) if res.fun <= f(x0 if two else x0[:1]) else x0
    return (float(x[0]), float(x[1])) if two else (float(x[0]), float(x[0]))


def fit_train_stage(curves: list[Curve], unit: float = 1.0) -> dict | None:
    """Stage 1, train: A_train T^b(d_i) + C_i over all fractions with squared error, one
    A_train, exponents linear in d, T = tokens / unit. For fixed exponents C_i = mean_i(y - A u) and A is closed
    form over the per-fraction-centred points, so every exponent pair on the grid is exact.
    A_train < 0 (a rising curve) is not a falling power law: A = 0 and the floors are the means."""
    use = [c for c in curves if len(np.unique(c.tokens[np.isfinite(c.target())])) >= MIN_POINTS]
    if not use:
        return None
    T = np.concatenate([c.tokens[np.isfinite(c.target())] for c in use]).astype(float) / unit
    y = np.concatenate([c.target()[np.isfinite(c.target())] for c in use]).astype(float)
    group = np.concatenate([np.full(int(np.isfinite(c.target()).sum()), j) for j, c in enumerate(use)])
    ds = np.array([c.fraction for c in use], float)
    lt = np.log(T)
    counts = np.bincount(group)
    onehot = np.eye(len(use))[group]  # (points, fractions): per-fraction sums as one matmul
    y_mean = (y @ onehot) / counts
    yc = y - y_mean[group]

    def solve(lo: np.ndarray, hi: np.ndarray):
        b = _exponent_line(ds[None, :], lo[:, None], hi[:, None]) if len(ds) > 1 else np.repeat(lo[:, None], 1, 1)
        logu = b[:, group] * lt[None, :]
        scale = logu.max(axis=1, keepdims=True)  # u / max u keeps the sums well scaled
        u = np.exp(logu - scale)
        uc = u - ((u @ onehot) / counts)[:, group]
        den = (uc * uc).sum(1)
        A = np.where(den > 0, (uc * yc).sum(1) / np.where(den > 0, den, 1.0), 0.0)
        A = np.maximum(A, 0.0)
        resid = yc - A[:, None] * uc
        return (resid * resid).sum(1), A, scale[:, 0], u

    lo, hi = _search(lambda a, b: solve(a, b)[0], _TRAIN_EXPONENTS, len(np.unique(ds)) > 1, 90)
    sse, A, scale, u = (v[0] for v in solve(np.array([lo]), np.array([hi])))
    C = y_mean - A * (u @ onehot) / counts
    b_s, b_g = _as_law_exponents(ds, lo, hi)
    A_train = float(A * math.exp(-scale))
    flat = A_train == 0.0
    if flat:
        b_s = b_g = 0.0
    return {"A_train": A_train, "b_train_s": b_s, "b_train_g": b_g, "flat": flat,
            "C": {float(d): float(c) for d, c in zip(ds, C)}, "sse": float(sse), "points": int(len(y))}


def fit_gap_stage(curves: list[Curve], unit: float = 1.0) -> dict | None:
    """Stage 1, gap: A_i T^b_gap(d_i) on test - train at d_i > 0 with squared error, every point
    (negative and zero gaps included), exponents linear in d, one amplitude per fraction
    (closed form for fixed exponents; any sign: a test split easier than the train sample
    gives A_i < 0). T = tokens / unit."""
    use = [c for c in curves if c.fraction > 0
           and len(np.unique(c.tokens[np.isfinite(c.test - c.train)])) >= 2]
    if not use:
        return None
    gap = [c.test - c.train for c in use]
    T = np.concatenate([c.tokens[np.isfinite(g)] for c, g in zip(use, gap)]).astype(float) / unit
    y = np.concatenate([g[np.isfinite(g)] for g in gap]).astype(float)
    group = np.concatenate([np.full(int(np.isfinite(g).sum()), j) for j, g in enumerate(gap)])
    ds = np.array([c.fraction for c in use], float)
    t_ref = math.exp(float(np.log(T).mean()))
    lt = np.log(T / t_ref)
    onehot = np.eye(len(use))[group]

    def solve(lo: np.ndarray, hi: np.ndarray):
        b = _exponent_line(ds[None, :], lo[:, None], hi[:, None]) if len(ds) > 1 else np.repeat(lo[:, None], 1, 1)
        u = np.exp(b[:, group] * lt[None, :])
        amp = ((u * y) @ onehot) / ((u * u) @ onehot)
        resid = y - amp[:, group] * u
        return (resid * resid).sum(1), amp, b

    lo, hi = _search(lambda a, b: solve(a, b)[0], _GAP_EXPONENTS, len(ds) > 1, 121)
    sse, amp, b = (v[0] for v in solve(np.array([lo]), np.array([hi])))
    b_s, b_g = _as_law_exponents(ds, lo, hi)
    return {"b_gap_s": b_s, "b_gap_g": b_g, "sse": float(sse), "points": int(len(y)),
            "A": {float(d): float(a * t_ref ** -bd) for d, a, bd in zip(ds, amp, b)}}


def per_fraction_curves(curves: list[Curve], train: dict | None, gap: dict | None, unit: float = 1.0) -> list[dict]:
    """Stage 1 as one curve per fraction, A T^b + C (+ G T^g) with T = tokens / unit, with its
    error and notes."""
    out = []
    for c in curves:
        notes = []
        entry = {"fraction": c.fraction, "points": int(len(c.tokens)), "token_unit": unit, "train": None, "gap": None,
                 "notes": notes}
        if train is None or c.fraction not in train["C"]:
            n = len(np.unique(c.tokens[np.isfinite(c.target())]))
            notes.append(f"domain loss at {n} distinct token count(s); a power law with a floor needs {MIN_POINTS}")
            out.append(entry)
            continue
        b = c.fraction * train["b_train_s"] + (1 - c.fraction) * train["b_train_g"]
        y = c.target()
        ok = np.isfinite(y)
        fitted = train["A_train"] * (c.tokens[ok] / unit) ** b + train["C"][c.fraction]
        entry["train"] = {"A": train["A_train"], "b": b, "C": train["C"][c.fraction], "flat": train["flat"],
                          "mean_abs_rel_error_pct": _mare(fitted, y[ok])}
        if y is c.test and c.fraction > 0:
            notes.append("no domain_train_loss: the curve is fitted to the test loss (gap taken as 0)")
        if train["flat"]:
            notes.append("the domain loss does not fall over these checkpoints: fitted as a constant")
        elif ok.sum() >= 2 and y[ok][np.argmax(c.tokens[ok])] > y[ok][np.argmin(c.tokens[ok])]:
            notes.append("this fraction's domain loss rises over the checkpoints; the shared falling power law "
                         "cannot follow it")
        if gap is not None and c.fraction in gap["A"]:
            g = c.fraction * gap["b_gap_s"] + (1 - c.fraction) * gap["b_gap_g"]
            entry["gap"] = {"G": gap["A"][c.fraction], "g": g,
                            "points": int(np.isfinite(c.test - c.train).sum())}
        elif c.fraction > 0 and y is not c.test:
            notes.append("fewer than 2 checkpoints with both train and test loss: gap not fitted")
        out.append(entry)
    return out


def fraction_coefficients(pf: dict) -> dict | None:
    """A per-fraction fit as A T^b + C + G T^g (None when its train curve was not fitted)."""
    if pf["train"] is None:
        return None
    gap = pf["gap"] or {"G": 0.0, "g": 0.0}
    return {"A": pf["train"]["A"], "b": pf["train"]["b"], "C": pf["train"]["C"], "G": gap["G"], "g": gap["g"],
            "unit": pf.get("token_unit", 1.0)}


# ---- stage 2: shape checks --------------------------------------------------------------------


def floor_shape(C: dict[float, float]) -> dict:
    """C_i against k0 - k1 log(d + k2) - k3 d: for each k2 (log grid over the joint law's range
    for k2, then polished) the rest is linear least squares. Residuals in nats; dof = fractions
    - 4 (0 or less: no check)."""
    d = np.array(sorted(C), float)
    c = np.array([C[x] for x in d])

    def best_k(lk2: float) -> tuple[float, np.ndarray]:
        M = np.column_stack([np.ones_like(d), -np.log(d + math.exp(lk2)), -d])
        k, *_ = np.linalg.lstsq(M, c, rcond=None)
        return float(((M @ k - c) ** 2).sum()), k

    grid = np.linspace(math.log(BOUNDS["k2"][0]), math.log(BOUNDS["k2"][1]), 160)
    i = int(np.argmin([best_k(x)[0] for x in grid]))
    lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    res = minimize_scalar(lambda x: best_k(x)[0], bounds=(lo, hi), method="bounded", options={"xatol": 1e-10})
    lk2 = float(res.x) if res.fun <= best_k(grid[i])[0] else float(grid[i])
    _, (k0, k1, k3) = best_k(lk2)
    params = {"k0": float(k0), "k1": float(k1), "k2": math.exp(lk2), "k3": float(k3)}
    fitted = k0 - k1 * np.log(d + params["k2"]) - k3 * d
    return _shape("C_train(d) = k0 - k1 log(d + k2) - k3 d", params, d, c, fitted, 4, "nats")


def gap_shape(A: dict[float, float]) -> dict:
    """A_i against a1 d^a2 exp(a3 d), which is linear in log space: log A = log a1 + a2 log d +
    a3 d. Residuals in log A; fractions with A_i <= 0 cannot follow a positive kernel."""
    d_all = np.array(sorted(A), float)
    pos = np.array([A[x] > 0 for x in d_all])
    d, a = d_all[pos], np.array([A[x] for x in d_all[pos]])
    params: dict = {"a1": None, "a2": None, "a3": None}
    fitted = np.full(len(d), np.nan)
    if len(d) >= 3:
        M = np.column_stack([np.ones_like(d), np.log(d), d])
        (la1, a2, a3), *_ = np.linalg.lstsq(M, np.log(a), rcond=None)
        params = {"a1": math.exp(la1), "a2": float(a2), "a3": float(a3)}
        fitted = M @ np.array([la1, a2, a3])
    out = _shape("log A_gap(d) = log a1 + a2 log d + a3 d", params, d, np.log(a) if len(a) else a, fitted, 3, "log")
    bad = [float(x) for x in d_all[~pos]]
    if bad:
        out["not_positive"] = bad
        out["note"] = (f"gap amplitude <= 0 at fraction(s) {', '.join(f'{x:g}' for x in bad)}: no overfitting "
                       "measured there, which a positive Gamma kernel cannot follow") + (
                       f"; {out['note']}" if out.get("note") else "")
    return out


def _shape(form: str, params: dict, d: np.ndarray, obs: np.ndarray, fitted: np.ndarray, k: int, unit: str) -> dict:
    resid = obs - fitted
    dof = int(len(d) - k)
    rms = float(np.sqrt(np.mean(resid**2))) if len(d) and np.isfinite(resid).all() else None
    out = {"shape": form, "params": params, "unit": unit, "dof": dof, "rms_residual": rms,
           "residuals": [{"fraction": float(x), "observed": float(o), "fitted": float(f), "residual": float(r)}
                         for x, o, f, r in zip(d, obs, fitted, resid)]}
    if dof <= 0:
        out["note"] = (f"{len(d)} fraction(s) for {k} coefficients: the shape passes through them whatever they "
                       "are, so this is no check")
    return out


# ---- stage 3: the joint law --------------------------------------------------------------------


def npt_decision(curve: Curve) -> dict:
    """Does NPT's domain test loss fall with tokens, as the law's train term at d = 0 must? The
    least-squares slope of the test loss in log tokens, per doubling, with its standard error:
    NPT enters the joint fit when the slope is below zero by more than NPT_FALL_SE errors."""
    ok = np.isfinite(curve.test) & (curve.tokens > 0)
    x, y = np.log(curve.tokens[ok]), curve.test[ok]
    out: dict = {"fraction": 0.0, "enters": False, "points": int(ok.sum()), "slope_per_doubling": None,
                 "slope_se": None, "first": None, "last": None}
    if len(np.unique(x)) < MIN_POINTS:
        out["why"] = (f"NPT's domain test loss at {len(np.unique(x))} token count(s): too few to tell whether it "
                      "falls; left out of the joint law")
        return out
    slope, icpt = np.polyfit(x, y, 1)
    resid = y - (slope * x + icpt)
    se = math.sqrt(float(resid @ resid) / max(len(x) - 2, 1) / float(((x - x.mean()) ** 2).sum()))
    first, last = (float(y[x == v].mean()) for v in (x.min(), x.max()))
    per = math.log(2)
    out.update(slope_per_doubling=float(slope * per), slope_se=float(se * per), first=first, last=last)
    out["enters"] = bool(slope + NPT_FALL_SE * se < 0)
    trend = f"{first:.4g} -> {last:.4g} nats, {slope * per:+.3g} ± {se * per:.2g} per doubling of tokens"
    out["why"] = (f"NPT's domain test loss falls with tokens ({trend}): fitted with the law" if out["enters"] else
                  f"NPT's domain test loss does not fall with tokens ({trend}): the law's train term at d = 0 "
                  "can only fall, so NPT would pin the shared exponents; left out of the joint law and "
                  "reported on its own")
    return out


def joint_blockers(train: dict | None, gap: dict | None) -> list[str]:
    """Why the joint law cannot be fitted from these stage-1 fits (empty: it can)."""
    with_gap = len(gap["A"]) if gap else 0
    if train is None or with_gap < MIN_GAP_FRACTIONS:
        return [f"{with_gap} fraction(s) > 0 with a fitted train-test gap; the gap kernel A_gap(d) has 3 "
                f"coefficients and its shape check needs a spare fraction: needs >= {MIN_GAP_FRACTIONS}"]
    return []


def initial_params(train: dict, gap: dict, floor: dict, kernel: dict) -> dict:
    """One start of the joint fit: stage 1's exponents and A_train, stage 2's floor and kernel
    (clipped into the law's bounds by the joint fit)."""
    k = floor["params"]
    a = kernel["params"]
    if a["a1"] is None:  # the kernel could not be fitted (amplitudes <= 0): a small gap growing like d
        positive = [v for v in gap["A"].values() if v > 0]
        a = {"a1": max(positive) if positive else 1e-6, "a2": 1.0, "a3": 0.0}
    return {"A_train": max(train["A_train"], 1e-6), "b_train_s": min(train["b_train_s"], -1e-3),
            "b_train_g": min(train["b_train_g"], -1e-3), "a1": a["a1"], "a2": a["a2"], "a3": a["a3"],
            "b_gap_s": gap["b_gap_s"], "b_gap_g": gap["b_gap_g"], **k}


def curve_errors(p: dict, c: Curve, unit: float = 1.0, points: bool = False) -> dict:
    """Mean and max absolute relative error (%) of the law on one curve; with `points`, every
    checkpoint's observed and predicted losses too (a held-out curve is judged over all of it)."""
    pred = law(p, c.tokens, c.fraction, unit)
    out: dict = {"fraction": c.fraction}
    for key in ("train", "test"):
        y = getattr(c, key)
        ok = np.isfinite(y)
        rel = np.abs(pred[key][ok] - y[ok]) / y[ok] * 100
        out[key] = ({"mean_abs_rel_error_pct": float(np.mean(rel)), "max_abs_rel_error_pct": float(np.max(rel))}
                    if ok.any() else None)  # that loss was not measured on this curve
    if points:
        out["curve"] = [{"tokens": float(t), **{f"{k}_observed": (float(getattr(c, k)[i]) if np.isfinite(getattr(c, k)[i])
                                                                 else None) for k in ("train", "test")},
                         "train_predicted": float(pred["train"][i]), "test_predicted": float(pred["test"][i])}
                        for i, t in enumerate(c.tokens)]
    return out


def law_checks(p: dict) -> list[dict]:
    """The sign and shape constraints the paper's fits showed; a failure is a warning, not an error."""
    b_gap_10 = 0.1 * p["b_gap_s"] + 0.9 * p["b_gap_g"]
    peak = (f"peaks at d = {p['a2'] / -p['a3']:.3g}" if p["a3"] < 0 else
            f"has no peak (a3 = {p['a3']:.3g}): it grows with d for ever")
    return [
        {"check": "b_train_g < 0 and b_train_s < 0", "ok": p["b_train_g"] < 0 and p["b_train_s"] < 0},
        {"check": "|b_train_g| < |b_train_s|", "ok": abs(p["b_train_g"]) < abs(p["b_train_s"])},
        {"check": "b_gap_g < 0 < b_gap_s", "ok": p["b_gap_g"] < 0 < p["b_gap_s"]},
        {"check": f"b_gap(0.10) = {b_gap_10:.3g} < 1 (sublinear overfitting)", "ok": b_gap_10 < 1},
        {"check": f"a3 < 0: the gap kernel A_gap(d) {peak}", "ok": p["a3"] < 0},
    ]


# ---- the whole fit ------------------------------------------------------------------------


def _is(d: float, f: float | None) -> bool:
    return f is not None and math.isclose(d, f, abs_tol=1e-9)


def fit_law(curves: list[Curve], gains: dict[float, tuple[np.ndarray, np.ndarray]] | None = None,
            holdout: float | None = None, starts: int = STARTS, seed: int = 0, loss: str = "sse") -> dict:
    """Stage 1 (per-fraction curves, shared exponents), stage 2 (shape checks), stage 3 (the
    joint law) when the data allow it, then finetuning gains and the warnings.

    `holdout` leaves one measured fraction out of stages 1-3 for the law and reports how well
    the law, and two naive baselines, predict its whole curve (the paper fits 0-5% and predicts
    10%); the per-fraction curves reported still include it. `not_fitted` says what could not
    be fitted and why.
    """
    from mixer.analysis.holdout import holdout_report
    from mixer.analysis.diagnostics import fit_warnings

    if loss not in LOSSES:
        raise UsageError(f"--loss {loss!r}: expected one of {', '.join(LOSSES)}")
    curves = sorted(curves, key=lambda c: c.fraction)
    if holdout is not None and not any(_is(c.fraction, holdout) for c in curves):
        have = ", ".join(f"{c.fraction:g}" for c in curves)
        raise UsageError(f"--holdout {holdout:g}: no pretraining runs at that fraction (fractions: {have})")
    unit = token_unit(np.concatenate([c.tokens for c in curves])) if curves else 1.0
    npt_curve = next((c for c in curves if c.fraction == 0), None)
    npt = npt_decision(npt_curve) if npt_curve is not None else None
    eligible = [c for c in curves if c.fraction > 0 or (npt and npt["enters"])]
    # Per-fraction curves: the law's fractions together (shared exponents), NPT on its own when it is out.
    train_all, gap_all = fit_train_stage(eligible, unit), fit_gap_stage(eligible, unit)
    per_fraction = per_fraction_curves(eligible, train_all, gap_all, unit)
    if npt is not None and not npt["enters"]:
        per_fraction = per_fraction_curves([npt_curve], fit_train_stage([npt_curve], unit), None, unit) + per_fraction
    out: dict = {"units": UNITS | {"token_unit": unit}, "loss": loss, "law": None, "not_fitted": [], "holdout": None,
                 "npt": npt, "checks": [], "shape_checks": [], "stage1": None, "per_fraction": per_fraction,
                 "finetune_gain": [], "bounds": {k: [lo, hi] for k, (lo, hi, _) in BOUNDS.items()}}
    law_curves = [c for c in eligible if not _is(c.fraction, holdout)]
    train, gap = ((train_all, gap_all) if holdout is None else
                  (fit_train_stage(law_curves, unit), fit_gap_stage(law_curves, unit)))
    out["stage1"] = {"train": train, "gap": gap, "fractions": [c.fraction for c in law_curves]}
    floor = floor_shape(train["C"]) if train and len(train["C"]) >= 2 else None
    kernel = gap_shape(gap["A"]) if gap else None
    out["shape_checks"] = [s for s in (floor, kernel) if s is not None]
    blockers = joint_blockers(train, gap)
    held = f" (with fraction {holdout:g} held out)" if holdout is not None else ""
    if blockers:
        out["not_fitted"].append({"what": "joint law", "why": "; ".join(blockers) + held})
    else:
        use = [c for c in law_curves if c.fraction in train["C"]]
        joint = fit_joint(use, unit, initial_params(train, gap, floor, kernel), starts=starts, seed=seed, loss=loss)
        joint["fractions"] = sorted(train["C"])
        joint["errors"] = [curve_errors(joint["params"], c, unit) for c in eligible]
        if not all(math.isfinite(v) for v in joint["params"].values()) or not math.isfinite(joint["objective"]):
            out["not_fitted"].append({"what": "joint law", "why": "the optimiser found no finite parameters"})
            joint = None
        out["law"] = joint
        out["checks"] = law_checks(joint["params"]) if joint else []
        if joint and holdout is not None:
            c = next(c for c in curves if _is(c.fraction, holdout))
            pf = next((p for p in per_fraction if _is(p["fraction"], holdout)), None)
            out["holdout"] = holdout_report(joint["params"], unit, c, use, pf)
    for p in per_fraction:
        if p["train"] is None:
            out["not_fitted"].append({"what": f"curve at fraction {p['fraction']:g}", "why": "; ".join(p["notes"])})
    for d, (T, g) in sorted((gains or {}).items()):
        out["finetune_gain"].append({"fraction": d} | fit_gain(T, g))
    if not gains:
        out["not_fitted"].append({"what": "finetuning gain",
                                  "why": "no finetune runs whose pretraining parent is among the runs"})
    out["warnings"] = fit_warnings(out)
    return out


# ---- finetuning gain ---------------------------------------------------------------------


def fit_gain(tokens: np.ndarray, gain: np.ndarray) -> dict:
    """dL(T) = a T^b + c by least squares over an exponent grid; a constant with < 3 points."""
    T, g = np.asarray(tokens, float), np.asarray(gain, float)
    measured = [float(T.min()), float(T.max())]
    if len(np.unique(T)) < MIN_POINTS:
        return {"a": 0.0, "b": 0.0, "c": float(np.mean(g)), "kind": "constant", "points": int(len(T)),
                "token_range": measured,
                "note": f"{len(np.unique(T))} finetuned checkpoint(s): gain taken as constant (a*T^b + c needs >= 3)"}
    best = None
    for b in np.linspace(-2, 1, 301):
        u = T**b / (T**b).max()
        M = np.column_stack([u, np.ones_like(u)])
        (a, c), *_ = np.linalg.lstsq(M, g, rcond=None)
        sse = float(((M @ [a, c] - g) ** 2).sum())
        if best is None or sse < best[0]:
            best = (sse, a / (T**b).max(), b, c)
    _, a, b, c = best
    return {"a": float(a), "b": float(b), "c": float(c), "kind": "power", "points": int(len(T)), "token_range": measured}


def gain_at(g: dict, tokens: np.ndarray | float) -> np.ndarray:
    return g["a"] * np.asarray(tokens, float) ** g["b"] + g["c"]


# ---- internals ---------------------------------------------------------------------------


def _mare(pred: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(np.abs(pred - y) / y) * 100)
