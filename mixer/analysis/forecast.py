"""Forecasts from a fit (`mixer plan --fit fit.json`): which fraction to use at a budget.

With the joint law any fraction can be forecast. Without it (a small study: too few
fractions for the law's 12 parameters) the per-fraction curves in fit.json still forecast
their own fraction over tokens, so `forecast` uses those and says so, and refuses only
fractions that were never measured: interpolating a law that was not fitted would be a guess
dressed as a number.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from mixer.formats.atomic import atomic_open
from mixer.errors import MixerError, UsageError
from mixer.analysis.scaling import curve_test, fraction_coefficients, gain_at, law_coefficients, onset_tokens
from mixer.units import format_count

# The paper's grid (0, 0.1%, 1%, 2%, 5%, 10%) with a few points between.
DEFAULT_FRACTIONS = [0.0, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1]
# Paper 1: with 300M domain tokens, 2-5% of 200B (13-33 epochs) was best; with 30M, 5% is
# 333 epochs and a late window (SCPT) won. The boundary sits between, near 100 epochs.
MAX_SPT_EPOCHS = 100
# A late window as the paper's SCPT: the last 10% of the budget (20B of 200B).
LATE_WINDOW = 0.1
# Even in the window, keep the domain under this many epochs; the paper's 3M-token set
# overfit even under SCPT, so below ~0.1% in the window we advise finetuning only.
SCPT_EPOCHS, MIN_WINDOW_FRACTION = 30, 0.001


def forecast(fit: dict, tokens: int, fractions: list[float] | None = None, domain_tokens: int | None = None) -> dict:
    """Forecast curves per fraction up to `tokens`, onset of overfitting, recommended fraction
    and the data-size regime. `fit` is the content of fit.json."""
    if tokens <= 0:
        raise UsageError(f"--tokens {tokens}: the budget must be positive")
    bad = [d for d in fractions or [] if not 0 <= d < 1]
    if bad:
        raise UsageError(f"fraction(s) {', '.join(f'{d:g}' for d in bad)}: give fractions as fractions in [0, 1), "
                         "e.g. 0.02 for 2%")
    warnings: list[str] = []
    coeffs, source = _coefficients(fit, fractions, warnings)
    lo, hi = (fit.get("data") or {}).get("token_range") or [tokens / 100, tokens]
    if tokens > 3 * hi:
        warnings.append(f"budget {format_count(tokens)} is {tokens / hi:.0f}x the largest measured checkpoint "
                        f"({format_count(hi)}): a long extrapolation")
    grid = np.logspace(math.log10(min(lo, tokens / 100)), math.log10(tokens), 60)
    gains = fit.get("finetune_gain") or []
    if not gains:
        warnings.append("the fit has no finetuning gain: post-finetuning loss is taken as the pretraining loss, "
                        "which favours fractions > 0 (NPT gains most from finetuning)")
    D = domain_tokens or fit.get("domain_tokens")
    if domain_tokens and fit.get("domain_tokens") and not 0.5 <= domain_tokens / fit["domain_tokens"] <= 2:
        warnings.append(f"the law was fitted with {format_count(fit['domain_tokens'])} domain tokens, you plan "
                        f"{format_count(domain_tokens)}: repetition differs, so overfitting will too")
    rows, curves = [], {}
    for d, c in coeffs:
        test = curve_test(c, grid)
        gain = np.maximum(_gain(gains, d, grid), 0.0)  # the gain of finetuning is >= 0 by definition
        onset = onset_tokens(c)
        curves[f"{d:g}"] = {"test_loss": test.tolist(), "post_ft_loss": (test - gain).tolist()}
        rows.append({
            "fraction": d, "epochs": tokens * d / D if D else None,
            "test_loss": float(test[-1]), "finetune_gain": float(gain[-1]), "post_ft_loss": float(test[-1] - gain[-1]),
            "overfit_onset_tokens": onset, "overfits_within_budget": onset is not None and onset <= tokens,
        })
    best = min(rows, key=lambda r: r["post_ft_loss"])
    recommended = {"fraction": best["fraction"], "post_ft_loss": best["post_ft_loss"],
                   "reason": f"lowest forecast post-finetuning domain test loss at {format_count(tokens)} tokens"}
    regime = _regime(best, tokens, D, fit.get("domain"))
    if best["overfits_within_budget"]:
        warnings.append(f"at fraction {best['fraction']:g} the domain test loss starts rising at "
                        f"{format_count(best['overfit_onset_tokens'])} tokens, inside the budget")
    return {"tokens": tokens, "domain_tokens": D, "source": source, "model": fit.get("model"),
            "domain": fit.get("domain"), "fractions": rows, "curves": {"tokens": grid.tolist(), "per_fraction": curves},
            "recommended": recommended, "regime": regime, "warnings": warnings, "units": fit.get("units")}


def format_forecast(result: dict) -> str:
    """A table a person can act on, then the recommendation, the regime and warnings."""
    head = f"Forecast at {format_count(result['tokens'])} tokens from the {result['source']}"
    if result.get("domain"):
        head += f" ({result.get('model')}, {result['domain']})"
    lines = [head, "", f"{'fraction':>9} {'epochs':>8} {'test loss':>10} {'FT gain':>8} {'post-FT':>8}  overfits from"]
    for r in result["fractions"]:
        onset = "never" if r["overfit_onset_tokens"] is None else format_count(r["overfit_onset_tokens"])
        mark = "  <- recommended" if r["fraction"] == result["recommended"]["fraction"] else ""
        epochs = "-" if r["epochs"] is None else f"{r['epochs']:.3g}"
        lines.append(f"{r['fraction']:>9.4g} {epochs:>8} {r['test_loss']:>10.4f} {r['finetune_gain']:>8.4f} "
                     f"{r['post_ft_loss']:>8.4f}  {onset}{mark}")
    rec = result["recommended"]
    lines += ["", f"Recommended fraction: {rec['fraction']:g} ({rec['reason']}: {rec['post_ft_loss']:.4f})",
              f"Regime: {result['regime']['message']}"]
    lines += [f"warning: {w}" for w in result["warnings"]]
    return "\n".join(lines)


def plot_forecast(result: dict, path: str | Path) -> None:
    """Left: forecast domain test loss (solid) and post-FT loss (dashed) over tokens, with the
    onset of overfitting; right: post-FT loss at the budget against the fraction."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.2))
    T = np.array(result["curves"]["tokens"])
    for i, r in enumerate(result["fractions"]):
        c = result["curves"]["per_fraction"][f"{r['fraction']:g}"]
        color = f"C{i % 10}"
        ax.plot(T, c["test_loss"], color=color, label=f"{r['fraction']:g}")
        ax.plot(T, c["post_ft_loss"], color=color, ls="--", lw=1)
        onset = r["overfit_onset_tokens"]
        if onset is not None and T[0] <= onset <= T[-1]:
            ax.plot([onset], [np.interp(onset, T, c["test_loss"])], "v", color=color, ms=8)
    ax.set(xscale="log", xlabel="pretraining tokens", ylabel="domain test loss (nats)",
           title="forecast: pretraining (solid), after FT (dashed), onset (v)")
    ax.legend(title="fraction", fontsize=8)
    fr = [r["fraction"] for r in result["fractions"]]
    x = np.arange(len(fr))
    bx.plot(x, [r["post_ft_loss"] for r in result["fractions"]], "o-")
    k = fr.index(result["recommended"]["fraction"])
    bx.plot([k], [result["recommended"]["post_ft_loss"]], "*", ms=16, color="C3", label="recommended")
    bx.set(xticks=x, xticklabels=[f"{f:g}" for f in fr], xlabel="domain fraction",
           ylabel="post-FT domain test loss", title=f"at {format_count(result['tokens'])} tokens")
    bx.legend()
    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)


def _coefficients(fit: dict, fractions: list[float] | None, warnings: list[str]) -> tuple[list[tuple[float, dict]], str]:
    if fit.get("law"):
        p, measured = fit["law"]["params"], fit["law"].get("fractions") or []
        # Default: the paper's grid and every fraction the law was fitted on.
        want = sorted(set(DEFAULT_FRACTIONS) | set(measured) if fractions is None else set(fractions))
        if measured and max(want) > max(measured) * 1.0001:
            warnings.append(f"fractions above {max(measured):g} (the largest fitted) are extrapolated in the fraction")
        return [(d, law_coefficients(p, d)) for d in want], "joint law"
    per = {pf["fraction"]: fraction_coefficients(pf) for pf in fit.get("per_fraction") or []}
    have = {d: c for d, c in per.items() if c is not None}
    if not have:
        why = "; ".join(f"{n['what']}: {n['why']}" for n in fit.get("not_fitted") or []) or "no curves"
        raise MixerError(f"fit has nothing to forecast with ({why}); run more checkpoints and fractions, then mixer fit")
    why = next((n["why"] for n in fit.get("not_fitted") or [] if n["what"] == "joint law"), "not fitted")
    warnings.append(f"no joint law ({why}): forecasting only the measured fractions, each from its own curve")
    if fractions is None:
        return sorted(have.items()), "per-fraction curves"
    missing = [d for d in fractions if not any(math.isclose(d, m, abs_tol=1e-9) for m in have)]
    if missing:
        listed = ", ".join(f"{d:g}" for d in missing)
        warnings.append(f"cannot forecast unmeasured fraction(s) {listed} without the joint law")
    keep = [(m, c) for m, c in sorted(have.items()) if any(math.isclose(d, m, abs_tol=1e-9) for d in fractions)]
    if not keep:
        raise MixerError(f"no joint law and none of the fractions {', '.join(f'{d:g}' for d in fractions)} was measured "
                         f"(measured: {', '.join(f'{d:g}' for d in sorted(have))})")
    return keep, "per-fraction curves"


def _gain(gains: list[dict], d: float, T: np.ndarray) -> np.ndarray:
    """Finetuning gain at fraction d: linear in d between the fractions where it was measured,
    the nearest one's outside them (the paper fits it per fraction only)."""
    if not gains:
        return np.zeros_like(T)
    fs = np.array([g["fraction"] for g in gains])
    values = np.array([gain_at(g, T) for g in gains])  # (fractions, tokens)
    if len(fs) == 1:
        return values[0]
    return np.array([np.interp(d, fs, values[:, j]) for j in range(len(T))])


def _regime(best: dict, tokens: int, D: int | None, domain: str | None) -> dict:
    d = best["fraction"]
    if not D:
        return {"name": "unknown", "epochs": None,
                "message": "domain corpus size unknown: pass --domain-tokens to check how often it would repeat"}
    E = tokens * d / D
    if d == 0:
        return {"name": "finetune-only", "epochs": 0.0,
                "message": "no domain data in pretraining is forecast best: keep it for finetuning (NPT -> FT)"}
    if E <= MAX_SPT_EPOCHS:
        return {"name": "spt", "epochs": E,
                "message": f"{E:.3g} epochs of the domain data at fraction {d:g}: mixing it in from the start (SPT) fits "
                           f"this data size (paper: 13-33 epochs were best at 300M domain tokens)"}
    window_tokens = LATE_WINDOW * tokens
    f_w = min(1.0, SCPT_EPOCHS * D / window_tokens)
    name = domain or "DOMAIN"
    if f_w < MIN_WINDOW_FRACTION:
        return {"name": "too-small", "epochs": E,
                "message": f"the domain corpus ({format_count(D)} tokens) is too small for this budget: {E:.3g} epochs at "
                           f"{d:g}, and even a late window would repeat it > {SCPT_EPOCHS} times; finetune only "
                           f"(NPT -> FT) or gather more domain data"}
    return {"name": "late-window", "epochs": E, "window": [1 - LATE_WINDOW, 1.0], "window_fraction": f_w,
            "message": f"{E:.3g} epochs of the domain data at fraction {d:g} (> {MAX_SPT_EPOCHS}): small corpora overfit "
                       f"under SPT; introduce it late (SCPT), e.g. mixer build --domain {name} --fraction {f_w:.3g} "
                       f"--window {1 - LATE_WINDOW:g}:1 --tokens {format_count(tokens)} "
                       f"({SCPT_EPOCHS} epochs in the window)"}
