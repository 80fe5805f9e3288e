"""The joint law's twelve parameters from many starts, inside physically meaningful bounds.

An unconditioned fit of the law misses a known law badly at 0.5% noise: the floor ran to
-15 nats and an exponent slope to 20 on the published study. Four things make this one
trustworthy (docs/science.md, "How mixer fits the law"):

1. Units. Tokens are divided by `token_unit` (a power of ten at or below the smallest
   checkpoint), so T^b stays O(1..100) and A_train is the train power term's value at a
   token count inside, or just below, the measured range. With exponents that vary with the
   fraction the unit is part of the law's family, so fit.json records it.
2. Bounds on every parameter, each a statement about losses (BOUNDS). The floor is written
   through its value at d = 1 (C(1) >= 0, k1 >= 0, k3 >= 0): a floor that falls with the
   fraction and never goes below zero, for any fraction.
3. Many starts (seeded): the exponents drawn across their ranges, the five parameters that
   enter linearly (A_train, the gap amplitude, C(1), k1, k3) then solved exactly by
   non-negative least squares, so every start is a consistent law. All starts run a short
   batched Levenberg-Marquardt at once (numpy, one array per quantity); the best few are
   polished by scipy's bounded trust-region least squares to convergence.
4. Diagnostics: convergence, parameters at a bound and how many starts reached the best
   objective are returned, for fit.json and the warnings.

Points: train losses at d > 0 and test losses (train + gap) at every fitted d, squared
error in nats (appendix D), or Huber on log-loss residuals (`loss="huber-log"`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.optimize import least_squares, nnls

PARAMS = ("A_train", "b_train_s", "b_train_g", "a1", "a2", "a3", "b_gap_s", "b_gap_g", "k0", "k1", "k2", "k3")
LOSSES = ("sse", "huber-log")
HUBER_DELTA = 1e-3  # Chinchilla's value for residuals of log loss

# Every parameter's range, and why (docs/science.md restates these). Losses are in nats,
# tokens in units of token_unit, fractions as fractions.
BOUNDS: dict[str, tuple[float, float, str]] = {
    "A_train": (0.0, 100.0, "the train power term at the token unit is a loss: >= 0 and far below 100 nats "
                            "(an untrained model scores ~ln(vocabulary) <= 12)"),
    "db_train": (-3.0, 0.0, "b_train_s - b_train_g: more domain data makes the domain's train loss fall at least "
                            "as fast (the paper's |b_train,g| < |b_train,s|)"),
    "b_train_g": (-3.0, 0.0, "the train loss falls with tokens (b <= 0), no faster than T^-3 (measured exponents "
                             "are -0.05 to -1)"),
    "gap_ref": (0.0, 100.0, "the gap amplitude at the largest fitted fraction and the token unit: a1 > 0 in the "
                            "Gamma kernel, and a loss"),
    "a2": (0.0, 5.0, "the kernel rises from zero at d = 0 (a2 >= 0), no steeper than d^5"),
    "a3": (-1000.0, 10.0, "a3 < 0 gives the kernel a peak at d = a2 / -a3 (>= 0.1% of the tokens for a2 >= 1 at "
                          "-1000); a3 > 0 (no peak) is allowed but flagged, and capped at 10 so the exponential "
                          "factor grows at most e^1 from 10% to 20%"),
    "db_gap": (0.0, 6.0, "b_gap_s - b_gap_g: more repetition makes the gap grow at least as fast with tokens (the "
                         "paper's b_gap,g < b_gap,s); at most 6, so the exponent moves <= 1.2 from 0 to 20%"),
    "b_gap_g": (-3.0, 3.0, "the gap may shrink or grow with tokens, within T^+-3"),
    "C_1": (0.0, 20.0, "the floor at d = 1, C(1) = k0 - k1 log(1 + k2) - k3: a loss, >= 0; with k1, k3 >= 0 the "
                       "floor falls with d, so C(d) >= 0 at every fraction"),
    "k1": (0.0, 5.0, "more domain data does not raise the train floor (k1 >= 0)"),
    "k2": (1e-4, 1.0, "the fraction below which domain data stops lowering the floor: under 0.01% it is not "
                      "measurable, above 100% the log term is linear in d"),
    "k3": (0.0, 20.0, "as k1, for the linear term"),
}
# Working parameters theta: A_train, db_train, b_train_g, gap_ref, a2, a3, db_gap, b_gap_g, C_1, k1, log k2, k3
# (an exponent at d is b_g + d db: db = b_s - b_g is its slope in the fraction).
THETA = ("A_train", "db_train", "b_train_g", "gap_ref", "a2", "a3", "db_gap", "b_gap_g", "C_1", "k1", "k2", "k3")
_LO = np.array([BOUNDS[k][0] for k in THETA])
_HI = np.array([BOUNDS[k][1] for k in THETA])
_LO[10], _HI[10] = math.log(_LO[10]), math.log(_HI[10])  # k2 is searched in log space
_LINEAR = [0, 3, 8, 9, 11]  # A_train, gap_ref, C_1, k1, k3: linear in the law for fixed exponents
# Where starts draw the nonlinear parameters: the bounds, narrowed to where losses live.
_DRAW = {1: (-1.5, 0.0), 2: (-1.5, -0.02), 4: (0.2, 3.0), 5: (-40.0, 5.0), 6: (0.0, 4.0), 7: (-1.5, 1.5),
         10: (math.log(1e-4), 0.0)}
_EXP_CAP = 60.0  # e^60: a huge finite loss for a wild trial step, never inf/NaN
SCREEN_ITERATIONS, POLISH = 40, 4


@dataclass(frozen=True)
class Points:
    """The measured losses the law is fitted to, tokens already divided by the unit."""

    T: np.ndarray
    d: np.ndarray
    y: np.ndarray
    test: np.ndarray  # True where y is a test loss (train + gap)
    d_ref: float  # the largest fitted fraction: gap_ref is the kernel's value there

    @classmethod
    def of(cls, curves: list, unit: float) -> "Points":
        T, d, y, test = [], [], [], []
        for c in curves:
            for values, is_test in ((c.train, False), (c.test, True)):
                if not is_test and c.fraction == 0:
                    continue  # no gap at d = 0: the test loss is the curve
                ok = np.isfinite(values)
                T.append(np.asarray(c.tokens, float)[ok] / unit)
                d.append(np.full(int(ok.sum()), float(c.fraction)))
                y.append(np.asarray(values, float)[ok])
                test.append(np.full(int(ok.sum()), is_test))
        d_all = np.concatenate(d)
        return cls(np.concatenate(T), d_all, np.concatenate(y), np.concatenate(test), float(d_all.max()))


def to_params(theta: np.ndarray, d_ref: float) -> dict:
    """Working parameters -> the law's twelve (docs/science.md's names)."""
    A, dbt, btg, g_ref, a2, a3, dbg, bgg, c_one, k1, lk2, k3 = (float(x) for x in theta)
    bts, bgs = btg + dbt, bgg + dbg
    k2 = math.exp(lk2)
    a1 = g_ref * math.exp(-a2 * math.log(d_ref) - a3 * d_ref) if g_ref > 0 else 0.0
    return {"A_train": A, "b_train_s": bts, "b_train_g": btg, "a1": a1, "a2": a2, "a3": a3, "b_gap_s": bgs,
            "b_gap_g": bgg, "k0": c_one + k1 * math.log1p(k2) + k3, "k1": k1, "k2": k2, "k3": k3}


def from_params(p: dict, d_ref: float) -> np.ndarray:
    """The law's twelve -> working parameters (a start from stages 1-2), clipped into the bounds."""
    g_ref = p["a1"] * d_ref ** p["a2"] * math.exp(p["a3"] * d_ref)
    c_one = p["k0"] - p["k1"] * math.log1p(p["k2"]) - p["k3"]
    theta = np.array([p["A_train"], p["b_train_s"] - p["b_train_g"], p["b_train_g"], g_ref, p["a2"], p["a3"],
                      p["b_gap_s"] - p["b_gap_g"], p["b_gap_g"], c_one, p["k1"], math.log(max(p["k2"], 1e-300)),
                      p["k3"]], float)
    return np.clip(np.nan_to_num(theta, nan=0.0), _LO, _HI)


def _columns(theta: np.ndarray, P: Points) -> tuple[np.ndarray, ...]:
    """For starts theta (S, 12): the power term u = T^b_train, the gap kernel times T^b_gap at
    unit amplitude (test rows only), and the floor's two shapes, each (S, n)."""
    dbt, btg, a2, a3, dbg, bgg, lk2 = (theta[:, i:i + 1] for i in (1, 2, 4, 5, 6, 7, 10))
    d, lt, pos = P.d[None, :], np.log(P.T)[None, :], P.d[None, :] > 0
    ld = np.log(np.where(pos, d, 1.0) / P.d_ref)
    u = np.exp(np.minimum((btg + d * dbt) * lt, _EXP_CAP))
    ker = np.where(pos & P.test[None, :],
                   np.exp(np.minimum(a2 * ld + a3 * (d - P.d_ref) + (bgg + d * dbg) * lt, _EXP_CAP)), 0.0)
    k2 = np.exp(lk2)
    log_col = np.log1p(k2) - np.log(d + k2)  # k1's column: log((1 + k2) / (d + k2))
    return u, ker, log_col, k2, ld, lt, d


def predict(theta: np.ndarray, P: Points) -> np.ndarray:
    theta = np.atleast_2d(theta)
    u, ker, log_col, *_ = _columns(theta, P)
    A, g, c1, k1, k3 = (theta[:, i:i + 1] for i in _LINEAR)
    return A * u + g * ker + c1 + k1 * log_col + k3 * (1 - P.d[None, :])


def _residuals_jacobian(theta: np.ndarray, P: Points, loss: str) -> tuple[np.ndarray, np.ndarray]:
    """Residuals (S, n) and their Jacobian (S, n, 12) in theta: pred - obs in nats, or
    log pred - log obs for the Huber objective."""
    u, ker, log_col, k2, ld, lt, d = _columns(theta, P)
    A, g, c1, k1, k3 = (theta[:, i:i + 1] for i in _LINEAR)
    pred = A * u + g * ker + c1 + k1 * log_col + k3 * (1 - d)
    G = g * ker
    J = np.stack([u, A * u * lt * d, A * u * lt, ker, G * ld, G * (d - P.d_ref), G * lt * d,
                  G * lt, np.ones_like(u), log_col, k1 * k2 * (1 / (1 + k2) - 1 / (d + k2)),
                  np.broadcast_to(1 - d, u.shape)], axis=-1)
    if loss == "sse":
        return pred - P.y[None, :], J
    p = np.maximum(pred, 1e-9)
    return np.log(p) - np.log(P.y)[None, :], J / p[..., None]


def _linear_part(theta: np.ndarray, P: Points) -> np.ndarray:
    """For each start, the five linear parameters by non-negative least squares given the
    exponents (all five are >= 0 by their bounds), then clipped to their upper bounds."""
    u, ker, log_col, *_ = _columns(theta, P)
    out = theta.copy()
    ones = np.ones(len(P.y))
    for s in range(len(theta)):
        M = np.column_stack([u[s], ker[s], ones, log_col[s], 1 - P.d])
        scale = np.maximum(np.abs(M).max(axis=0), 1e-300)
        x, _ = nnls(M / scale, P.y, maxiter=50 * M.shape[1])
        out[s, _LINEAR] = x / scale
    return np.clip(out, _LO, _HI)


def _screen(theta: np.ndarray, P: Points, loss: str, iterations: int) -> tuple[np.ndarray, np.ndarray]:
    """Levenberg-Marquardt on every start at once, steps projected into the bounds: a cheap
    way to sort many starts by where they lead, before the few best are polished."""
    r, J = _residuals_jacobian(theta, P, loss)
    cost = 0.5 * (r * r).sum(1)
    cost[~np.isfinite(cost)] = np.inf
    lam = np.full(len(theta), 1e-2)
    eye = np.eye(theta.shape[1])
    for _ in range(iterations):
        g = np.einsum("snk,sn->sk", J, r)
        H = np.einsum("snk,snl->skl", J, J)
        diag = np.diagonal(H, axis1=1, axis2=2)
        damp = lam[:, None] * diag + 1e-12 * (1 + diag.max(1, keepdims=True))
        step = -np.linalg.solve(H + damp[:, :, None] * eye, g[..., None])[..., 0]
        trial = np.clip(theta + np.nan_to_num(step, nan=0.0), _LO, _HI)
        r2, J2 = _residuals_jacobian(trial, P, loss)
        c2 = 0.5 * (r2 * r2).sum(1)
        better = np.isfinite(c2) & (c2 < cost)
        theta = np.where(better[:, None], trial, theta)
        r = np.where(better[:, None], r2, r)
        J = np.where(better[:, None, None], J2, J)
        cost = np.where(better, c2, cost)
        lam = np.clip(np.where(better, lam / 3, lam * 4), 1e-9, 1e9)
    return theta, cost


def fit_joint(curves: list, unit: float, start: dict | None = None, starts: int = 64, seed: int = 0,
              loss: str = "sse") -> dict:
    """All twelve parameters from `starts` seeded starts (and `start`, stages 1-2's values, if
    given); the lowest objective wins. Returns the parameters, the objective, convergence,
    parameters at a bound and how many starts reached the best objective."""
    P = Points.of(curves, unit)
    rng = np.random.default_rng(seed)
    draws = np.zeros((starts, len(THETA)))
    for i, (lo, hi) in _DRAW.items():
        draws[:, i] = rng.uniform(lo, hi, starts)
    draws = _linear_part(draws, P)
    if start is not None:
        draws[0] = from_params(start, P.d_ref)
    screened, cost = _screen(draws, P, loss, SCREEN_ITERATIONS)
    order = np.argsort(cost)
    single = lambda th: _residuals_jacobian(th[None, :], P, loss)  # noqa: E731
    kw = ({"loss": "linear"} if loss == "sse" else {"loss": "huber", "f_scale": HUBER_DELTA})
    polished = []
    for i in order[:POLISH]:
        if not np.isfinite(cost[i]):
            continue
        x0 = np.clip(screened[i], _LO + 1e-12 * (_HI - _LO), _HI - 1e-12 * (_HI - _LO))
        polished.append(least_squares(lambda th: single(th)[0][0], x0, jac=lambda th: single(th)[1][0],
                                      bounds=(_LO, _HI), method="trf", x_scale="jac", ftol=1e-15, xtol=1e-15,
                                      gtol=1e-15, max_nfev=2000, **kw))
    if not polished:  # every start's loss overflowed: nothing finite to report
        nan = {k: math.nan for k in PARAMS}
        return {"params": nan, "objective": math.nan, "loss": loss, "converged": False,
                "optimizer": "no start had a finite objective", "starts": int(starts), "starts_at_best": 0,
                "at_bound": [], "points": int(len(P.y)), "evaluations": int(starts * (SCREEN_ITERATIONS + 1))}
    best = min(polished, key=lambda r: r.cost)
    objective = float(best.cost)
    agree = int(np.sum(cost <= objective * (1 + 1e-3) + 1e-12))
    theta = best.x
    return {"params": to_params(theta, P.d_ref), "objective": objective, "loss": loss,
            "converged": bool(best.status > 0), "optimizer": best.message,
            "starts": int(starts), "starts_at_best": max(agree, 1),
            "at_bound": at_bounds(theta), "points": int(len(P.y)),
            "evaluations": int(starts * (SCREEN_ITERATIONS + 1) + sum(r.nfev for r in polished))}


def at_bounds(theta: np.ndarray) -> list[dict]:
    """Parameters that ended on a bound: the data pushed them to the edge of what the law
    allows, so the fit there is the bound's, not the data's."""
    out = []
    for i, name in enumerate(THETA):
        lo, hi, _ = BOUNDS[name]
        x = math.exp(theta[i]) if name == "k2" else float(theta[i])
        width = hi - lo
        for side, b in (("lower", lo), ("upper", hi)):
            if abs(x - b) <= 1e-6 * width + (1e-6 * b if name == "k2" else 0):
                out.append({"param": name, "value": x, "bound": b, "side": side, "why": BOUNDS[name][2]})
    return out
