"""Forecasts from a fit (`mixer plan --fit fit.json`): which fraction to use at a budget.

A forecast stays inside what was measured: pretraining tokens between the smallest and
the largest evaluated checkpoint, fractions between the smallest and largest fitted one
(the joint law) or exactly the measured ones (per-fraction curves), and the finetuning
gain dL only at fractions and tokens where finetunes were run (linear in the fraction
between measured fractions). `extrapolate=True` (`--extrapolate`) lifts these limits and
every result then says how far it went: the budget as a multiple of the largest checkpoint,
fractions beyond the fitted ones, gains held at the nearest measured fraction.

The data-size regime (SPT, a late window, finetune only) uses thresholds that are mixer's
own, set between the paper's observations (THRESHOLDS, named in every message): the paper
reports what worked at 300M and 30M domain tokens, not a rule.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from mixer.analysis.scaling import curve_test, fraction_coefficients, gain_at, law_coefficients, onset_tokens
from mixer.errors import MixerError, UsageError
from mixer.formats.atomic import atomic_open
from mixer.units import format_count

# The paper's grid (0, 0.1%, 1%, 2%, 5%, 10%) with a few points between.
DEFAULT_FRACTIONS = [0.0, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1]
# mixer's thresholds, not the paper's rules. Paper 1 found 2-5% of 200B (13-33 epochs) best
# with 300M domain tokens and a late window (SCPT) best with 30M, where 5% is 333 epochs:
# mixer puts the SPT limit between, at 100 epochs; a late window is the last 10% of the
# budget (the paper's 20B of 200B), kept under 30 epochs, and below 0.1% of the window the
# domain is left to finetuning (the paper's 3M-token set overfit even under SCPT).
MAX_SPT_EPOCHS = 100
LATE_WINDOW = 0.1
SCPT_EPOCHS, MIN_WINDOW_FRACTION = 30, 0.001
THRESHOLDS = {"max_spt_epochs": MAX_SPT_EPOCHS, "late_window": LATE_WINDOW, "scpt_epochs": SCPT_EPOCHS,
              "min_window_fraction": MIN_WINDOW_FRACTION, "source": "mixer (set between the paper's observations)"}
_EPS = 1e-9


def forecast(fit: dict, tokens: int, fractions: list[float] | None = None, domain_tokens: int | None = None,
             extrapolate: bool = False) -> dict:
    """Forecast curves per fraction, the loss at the budget `tokens`, onset of overfitting,
    recommended fraction and data-size regime. `fit` is the content of fit.json."""
    if tokens <= 0:
        raise UsageError(f"--tokens {tokens}: the budget must be positive")
    bad = [d for d in fractions or [] if not 0 <= d < 1]
    if bad:
        raise UsageError(f"fraction(s) {', '.join(f'{d:g}' for d in bad)}: give fractions as fractions in [0, 1), "
                         "e.g. 0.02 for 2%")
    # The fit's own warnings first: a forecast is no better than the law it comes from.
    warnings: list[str] = [f"fit: {w['message']}" for w in fit.get("warnings") or []]
    extrapolation: dict = {"tokens": 1.0, "fractions": [], "finetune_gain": []}
    lo, hi = (fit.get("data") or {}).get("token_range") or [tokens, tokens]
    if tokens > hi * (1 + _EPS) or tokens < lo * (1 - _EPS):
        factor = tokens / hi if tokens > hi else lo / tokens
        where = (f"{factor:.3g}x the largest measured checkpoint ({format_count(hi)})" if tokens > hi else
                 f"{factor:.3g}x below the smallest measured checkpoint ({format_count(lo)})")
        if not extrapolate:
            raise UsageError(f"--tokens {format_count(tokens)}: {where}; the fit was measured on "
                             f"{format_count(lo)}..{format_count(hi)} tokens. Forecast inside that range, or pass "
                             "--extrapolate to forecast beyond it")
        extrapolation["tokens"] = factor
        warnings.append(f"extrapolated in tokens: the budget {format_count(tokens)} is {where}")
    coeffs, source = _coefficients(fit, fractions, warnings, extrapolate, extrapolation)
    grid = np.logspace(math.log10(min(lo, tokens)), math.log10(max(hi, tokens)), 60)
    gains = fit.get("finetune_gain") or []
    if not gains:
        warnings.append("the fit has no finetuning gain: post-finetuning loss is taken as the pretraining loss, "
                        "which favours fractions > 0 (NPT gains most from finetuning)")
    for g in gains:
        if g.get("kind") == "constant":
            warnings.append(f"finetuning gain at fraction {g['fraction']:g} from {g['points']} finetuned checkpoint(s): "
                            f"taken as a constant {g['c']:.4g} nats at every token count (mixer's assumption; "
                            "a*T^b + c needs >= 3 finetuned checkpoints)")
    D = domain_tokens or fit.get("domain_tokens")
    if domain_tokens and fit.get("domain_tokens") and not 0.5 <= domain_tokens / fit["domain_tokens"] <= 2:
        warnings.append(f"the law was fitted with {format_count(fit['domain_tokens'])} domain tokens, you plan "
                        f"{format_count(domain_tokens)}: repetition differs, so overfitting will too")
    rows, curves = [], {}
    for d, c in coeffs:
        test = curve_test(c, grid)
        gain_grid = _gain(gains, d, grid, extrapolate, extrapolation, warnings)
        at_budget = _gain(gains, d, np.array([float(tokens)]), extrapolate, None, None)
        test_T = float(curve_test(c, float(tokens)))
        gain_T = None if at_budget is None or not np.isfinite(at_budget[0]) else max(float(at_budget[0]), 0.0)
        onset = onset_tokens(c)
        post = None if gain_grid is None else test - np.maximum(gain_grid, 0.0)  # NaN: gain not measured there
        curves[f"{d:g}"] = {"test_loss": test.tolist(),
                            "post_ft_loss": None if post is None else [None if not np.isfinite(v) else float(v)
                                                                       for v in post]}
        rows.append({
            "fraction": d, "epochs": tokens * d / D if D else None,
            "test_loss": test_T, "finetune_gain": gain_T, "post_ft_loss": None if gain_T is None else test_T - gain_T,
            "overfit_onset_tokens": onset, "overfits_within_budget": onset is not None and onset <= tokens,
        })
    recommended = _recommend(rows, fit, tokens, warnings)
    regime = _regime(rows, recommended, tokens, D, fit.get("domain"))
    best = next((r for r in rows if recommended and r["fraction"] == recommended["fraction"]), None)
    if best and best["overfits_within_budget"]:
        warnings.append(f"at fraction {best['fraction']:g} the domain test loss starts rising at "
                        f"{format_count(best['overfit_onset_tokens'])} tokens, inside the budget")
    return {"tokens": tokens, "domain_tokens": D, "source": source, "model": fit.get("model"),
            "domain": fit.get("domain"), "fractions": rows,
            "curves": {"tokens": grid.tolist(), "measured_tokens": [lo, hi], "per_fraction": curves},
            "recommended": recommended, "regime": regime, "thresholds": THRESHOLDS,
            "extrapolated": extrapolate, "extrapolation": extrapolation, "warnings": warnings,
            "units": fit.get("units")}


def format_forecast(result: dict) -> str:
    """A table a person can act on, then the recommendation, the regime and warnings."""
    head = f"Forecast at {format_count(result['tokens'])} tokens from the {result['source']}"
    if result.get("domain"):
        head += f" ({result.get('model')}, {result['domain']})"
    lo, hi = result["curves"]["measured_tokens"]
    head += f"; measured {format_count(lo)}..{format_count(hi)} tokens"
    fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
    lines = [head, "", f"{'fraction':>9} {'epochs':>8} {'test loss':>10} {'FT gain':>8} {'post-FT':>8}  overfits from"]
    rec = result["recommended"]
    for r in result["fractions"]:
        onset = "never" if r["overfit_onset_tokens"] is None else format_count(r["overfit_onset_tokens"])
        mark = "  <- recommended" if rec and r["fraction"] == rec["fraction"] else ""
        epochs = "-" if r["epochs"] is None else f"{r['epochs']:.3g}"
        lines.append(f"{r['fraction']:>9.4g} {epochs:>8} {r['test_loss']:>10.4f} {fmt(r['finetune_gain']):>8} "
                     f"{fmt(r['post_ft_loss']):>8}  {onset}{mark}")
    lines.append("")
    if rec:
        lines.append(f"Recommended fraction: {rec['fraction']:g} ({rec['reason']}: {rec['post_ft_loss']:.4f})")
    else:
        lines.append("No recommendation: no fraction has a forecast post-finetuning loss at this budget")
    lines.append(f"Regime: {result['regime']['message']}")
    lines += [f"warning: {w}" for w in result["warnings"]]
    return "\n".join(lines)


def plot_forecast(result: dict, path: str | Path) -> None:
    """Left: forecast domain test loss (solid) and post-FT loss (dashed) over tokens, the
    measured range shaded and the budget marked, the y axis on the forecast values (power
    laws far outside the data would squash everything else); right: post-FT loss at the
    budget against the fraction."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.2))
    T = np.array(result["curves"]["tokens"])
    lo, hi = result["curves"]["measured_tokens"]
    shown = []
    for i, r in enumerate(result["fractions"]):
        c = result["curves"]["per_fraction"][f"{r['fraction']:g}"]
        color = f"C{i % 10}"
        ax.plot(T, c["test_loss"], color=color, label=f"{r['fraction']:g}")
        shown.append(np.asarray(c["test_loss"], float))
        if c["post_ft_loss"] is not None:
            post = np.array([np.nan if v is None else v for v in c["post_ft_loss"]], float)
            ax.plot(T, post, color=color, ls="--", lw=1)
            shown.append(post)
        onset = r["overfit_onset_tokens"]
        if onset is not None and T[0] <= onset <= T[-1]:
            ax.plot([onset], [np.interp(onset, T, c["test_loss"])], "v", color=color, ms=8)
    ax.axvspan(lo, hi, color="0.92", zorder=0, label="measured")
    ax.axvline(result["tokens"], color="0.4", lw=0.8, ls=":")
    values = np.concatenate(shown) if shown else np.zeros(1)
    values = values[np.isfinite(values)]
    if len(values):
        top, bottom = float(values.max()), float(values.min())
        pad = 0.05 * max(top - bottom, 1e-3)
        ax.set_ylim(bottom - pad, top + pad)
    ax.set(xscale="log", xlabel="pretraining tokens", ylabel="domain test loss (nats)",
           title="forecast: pretraining (solid), after FT (dashed), onset (v)")
    ax.legend(title="fraction", fontsize=8)
    rows = [r for r in result["fractions"] if r["post_ft_loss"] is not None]
    fr = [r["fraction"] for r in rows]
    x = np.arange(len(fr))
    bx.plot(x, [r["post_ft_loss"] for r in rows], "o-")
    rec = result["recommended"]
    if rec and rec["fraction"] in fr:
        bx.plot([fr.index(rec["fraction"])], [rec["post_ft_loss"]], "*", ms=16, color="C3", label="recommended")
        bx.legend()
    bx.set(xticks=x, xticklabels=[f"{f:g}" for f in fr], xlabel="domain fraction",
           ylabel="post-FT domain test loss", title=f"at {format_count(result['tokens'])} tokens")
    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)


def _coefficients(fit: dict, fractions: list[float] | None, warnings: list[str], extrapolate: bool,
                  extrapolation: dict) -> tuple[list[tuple[float, dict]], str]:
    if fit.get("law"):
        p, measured = fit["law"]["params"], fit["law"].get("fractions") or []
        unit = (fit.get("units") or {}).get("token_unit", 1.0)
        d_lo, d_hi = (min(measured), max(measured)) if measured else (0.0, 1.0)
        # NPT left out of the law (its domain loss did not fall) is forecast from its own curve.
        npt = next((fraction_coefficients(pf) for pf in fit.get("per_fraction") or []
                    if pf["fraction"] == 0 and not (fit.get("npt") or {}).get("enters", True)), None)
        inside = lambda d: d_lo - _EPS <= d <= d_hi + _EPS or (d == 0 and npt is not None)  # noqa: E731
        if fractions is None:  # the paper's grid and every fitted fraction, inside the fitted range
            want = sorted(set(DEFAULT_FRACTIONS) | set(measured))
            if not extrapolate:
                left = [d for d in want if not inside(d)]
                want = [d for d in want if inside(d)]
                if left:
                    warnings.append(f"fractions {', '.join(f'{d:g}' for d in left)} of the default grid are outside "
                                    f"the fitted {d_lo:g}..{d_hi:g}; not forecast (--extrapolate to include them)")
        else:
            want = sorted(set(fractions))
            outside = [d for d in want if not inside(d)]
            if outside and not extrapolate:
                raise UsageError(f"fraction(s) {', '.join(f'{d:g}' for d in outside)}: outside the fractions the law "
                                 f"was fitted on ({d_lo:g}..{d_hi:g}); pass --extrapolate to forecast them anyway")
        for d in want:
            if not inside(d):
                by = f"{d / d_hi:.3g}x the largest fitted fraction {d_hi:g}" if d > d_hi else f"below {d_lo:g}"
                extrapolation["fractions"].append({"fraction": d, "beyond": by})
                warnings.append(f"extrapolated in the fraction: {d:g} is {by}")
        if npt is not None and 0.0 in want:
            warnings.append("fraction 0 (NPT) is outside the law (its domain loss did not fall with tokens): "
                            "forecast from its own measured curve, only inside its checkpoints")
        return [(d, npt if d == 0 and npt is not None else law_coefficients(p, d, unit)) for d in want], "joint law"
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


def _gain(gains: list[dict], d: float, T: np.ndarray, extrapolate: bool, extrapolation: dict | None,
          warnings: list[str] | None) -> np.ndarray | None:
    """Finetuning gain at fraction d over tokens T: linear in d between the two measured
    fractions around it (the paper fits it per fraction only). Outside the measured fractions,
    or outside the tokens a gain was measured at, it is not forecast (NaN; None for a fraction
    with no gain at all), unless `extrapolate`: then the nearest measured fraction's gain
    and the fitted curve beyond its tokens, said in `extrapolation` and `warnings`."""
    if not gains:
        return np.zeros_like(T, dtype=float)
    gains = sorted(gains, key=lambda g: g["fraction"])
    fs = np.array([g["fraction"] for g in gains])
    if not fs[0] - _EPS <= d <= fs[-1] + _EPS:
        near = gains[int(np.argmin(np.abs(fs - d)))]
        if not extrapolate:
            if warnings is not None:
                warnings.append(f"no finetuning gain measured at or around fraction {d:g} (measured at "
                                f"{', '.join(f'{f:g}' for f in fs)}): its post-FT loss is not forecast "
                                "(--extrapolate holds the nearest measured gain)")
            return None
        if extrapolation is not None:
            extrapolation["finetune_gain"].append({"fraction": d, "held_from": near["fraction"]})
            warnings.append(f"extrapolated finetuning gain: fraction {d:g} takes that of {near['fraction']:g}, "
                            "the nearest measured (mixer's assumption)")
        pair = [near]
    else:
        k = int(np.searchsorted(fs, d - _EPS))
        pair = [gains[min(k, len(gains) - 1)]] if math.isclose(fs[min(k, len(fs) - 1)], d, abs_tol=_EPS) else [
            gains[k - 1], gains[k]]
    values = []
    for g in pair:
        v = gain_at(g, T).astype(float)
        t_lo, t_hi = g.get("token_range") or [-np.inf, np.inf]
        outside = (T < t_lo * (1 - _EPS)) | (T > t_hi * (1 + _EPS))
        if outside.any() and extrapolate and extrapolation is not None:
            extrapolation["finetune_gain"].append({"fraction": d, "tokens_outside": [t_lo, t_hi]})
        if not extrapolate:
            v[outside] = np.nan
        values.append(v)
    if len(pair) == 1:
        return values[0]
    w = (d - pair[0]["fraction"]) / (pair[1]["fraction"] - pair[0]["fraction"])
    return (1 - w) * values[0] + w * values[1]


def _recommend(rows: list[dict], fit: dict, tokens: int, warnings: list[str]) -> dict | None:
    """The lowest forecast post-FT loss, and whether the fit can tell it from the next best:
    a difference smaller than the fit's own error on its measured points is not a ranking."""
    have = [r for r in rows if r["post_ft_loss"] is not None]
    if not have:
        return None
    ranked = sorted(have, key=lambda r: r["post_ft_loss"])
    best = ranked[0]
    rec = {"fraction": best["fraction"], "post_ft_loss": best["post_ft_loss"],
           "reason": f"lowest forecast post-finetuning domain test loss at {format_count(tokens)} tokens",
           "margin": None, "fit_error": None, "resolved": None}
    err = _fit_error(fit, best["fraction"], best["test_loss"])
    if len(ranked) > 1:
        rec["margin"] = ranked[1]["post_ft_loss"] - best["post_ft_loss"]
        rec["fit_error"] = err
        rec["resolved"] = err is None or rec["margin"] > err
        if not rec["resolved"]:
            warnings.append(f"the forecast cannot rank these fractions: the best ({best['fraction']:g}) beats the next "
                            f"({ranked[1]['fraction']:g}) by {rec['margin']:.3g} nats, less than the fit's own error "
                            f"on its measured points (~{err:.3g} nats)")
    return rec


def _fit_error(fit: dict, d: float, level: float) -> float | None:
    """The fit's typical error in nats near fraction d: its mean relative error on the measured
    test losses (joint law, else the per-fraction curves) times the loss level."""
    if fit.get("law") and fit["law"].get("errors"):
        pct = [e["test"]["mean_abs_rel_error_pct"] for e in fit["law"]["errors"] if e.get("test")]
    else:
        pct = [p["train"]["mean_abs_rel_error_pct"] for p in fit.get("per_fraction") or [] if p.get("train")]
    return max(pct) / 100 * level if pct else None


def _regime(rows: list[dict], rec: dict | None, tokens: int, D: int | None, domain: str | None) -> dict:
    if rec is None:
        return {"name": "unknown", "epochs": None, "message": "no recommended fraction, so no regime"}
    d = rec["fraction"]
    if not D:
        return {"name": "unknown", "epochs": None,
                "message": "domain corpus size unknown: pass --domain-tokens to check how often it would repeat"}
    E = tokens * d / D
    if d == 0:
        return {"name": "finetune-only", "epochs": 0.0,
                "message": "no domain data in pretraining is forecast best: keep it for finetuning (NPT -> FT)"}
    if E <= MAX_SPT_EPOCHS:
        return {"name": "spt", "epochs": E,
                "message": f"{E:.3g} epochs of the domain data at fraction {d:g}, within mixer's limit of "
                           f"{MAX_SPT_EPOCHS} for mixing it in from the start (SPT; the paper found 13-33 epochs "
                           "best at 300M domain tokens)"}
    window_tokens = LATE_WINDOW * tokens
    f_w = min(1.0, SCPT_EPOCHS * D / window_tokens)
    name = domain or "DOMAIN"
    if f_w < MIN_WINDOW_FRACTION:
        return {"name": "too-small", "epochs": E,
                "message": f"the domain corpus ({format_count(D)} tokens) is too small for this budget by mixer's "
                           f"thresholds: {E:.3g} epochs at {d:g}, and even a late window would repeat it more than "
                           f"{SCPT_EPOCHS} times; finetune only (NPT -> FT) or gather more domain data"}
    return {"name": "late-window", "epochs": E, "window": [1 - LATE_WINDOW, 1.0], "window_fraction": f_w,
            "message": f"{E:.3g} epochs of the domain data at fraction {d:g}, over mixer's SPT limit of "
                       f"{MAX_SPT_EPOCHS} (the paper saw small corpora overfit under SPT): introduce it late "
                       f"(SCPT), e.g. mixer build --domain {name} --fraction {f_w:.3g} --window {1 - LATE_WINDOW:g}:1 "
                       f"--tokens {format_count(tokens)} ({SCPT_EPOCHS} epochs in the last {LATE_WINDOW:.0%}, "
                       "mixer's choice)"}
