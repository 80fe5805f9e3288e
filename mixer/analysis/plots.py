"""The report's and the fit's PNG plots (matplotlib, Agg backend, written atomically)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from mixer.analysis.metrics import pareto_front
from mixer.analysis.scaling import Curve, curve_test, fraction_coefficients, law_coefficients
from mixer.analysis.setups import setup_of
from mixer.formats.atomic import atomic_open
from mixer.formats.run import Run
from mixer.units import format_count


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    _pyplot().close(fig)
    return path


def _panels(domains: list[str], title: str):
    """One panel per domain: domains' losses differ by nats, so a shared axis would flatten the
    differences between setups that the plots are for."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(domains), figsize=(7 if len(domains) == 1 else 5.5 * len(domains), 4.5),
                             squeeze=False)
    panels = dict(zip(domains, axes[0]))
    if len(domains) == 1:
        axes[0][0].set_title(title)
    else:
        fig.suptitle(title)
        for d, ax in panels.items():
            ax.set_title(d)
    return fig, panels


def _setup_rank(fraction: float, window) -> tuple:
    """Colour order shared by every panel and plot: NPT, SPT by fraction, then SCPT."""
    late = tuple(window) != (0.0, 1.0)
    return (0 if fraction == 0 else 2 if late else 1, fraction, tuple(window))


def plot_domain_curves(runs: list[Run], path: Path) -> Path | None:
    """Domain test loss over pretraining tokens, one panel per domain, one colour per setup (all seeds drawn)."""
    pre = [r for r in runs if r.kind == "pretrain" and any(e.domain_test_loss is not None and e.tokens > 0 for e in r.evals)]
    if not pre:
        return None
    fig, panels = _panels(sorted({str(r.domain) for r in pre}), "domain loss during pretraining")
    many = len({r.model for r in pre}) > 1  # the model joins the label (and the colour) only when it varies
    family = lambda r: (f"{r.model} " if many else "") + setup_of(r)  # noqa: E731
    rank = lambda r: _setup_rank(r.fraction, r.window)  # noqa: E731
    ranked = {family(r): (r.model, rank(r)) for r in pre}
    colours = {s: f"C{i % 10}" for i, s in enumerate(sorted(ranked, key=ranked.get))}
    for domain, ax in panels.items():
        mine = [r for r in pre if str(r.domain) == domain]
        labelled = set()
        for r in sorted(mine, key=lambda r: (r.model, rank(r), r.seed)):
            pts = [(e.tokens, e.domain_test_loss) for e in r.evals if e.domain_test_loss is not None and e.tokens > 0]
            name = family(r)
            ax.plot(*zip(*pts), "o-", ms=3, color=colours[name], label=None if name in labelled else name)
            labelled.add(name)
        ax.set(xscale="log", xlabel="pretraining tokens", ylabel="domain test loss (nats)")
        ax.legend(fontsize=8)
    return _save(fig, path)


def plot_post_ft(report: dict, path: Path) -> Path | None:
    """Best post-FT domain loss against the fraction (mean ± std over seeds), largest budget, per domain."""
    if not report["table"]:
        return None
    fig, panels = _panels(sorted({str(e["domain"]) for e in report["table"]}), "after finetuning (early stopped)")
    fractions = sorted({e["fraction"] for e in report["table"]})
    many = len({e["model"] for e in report["table"]}) > 1
    for domain, ax in panels.items():
        series = defaultdict(list)
        for e in report["table"]:
            if str(e["domain"]) == domain:
                series[(e["model"], e["finetune"], "SCPT" if e["setup"].startswith("SCPT") else "")].append(e)
        for i, (key, es) in enumerate(sorted(series.items(), key=lambda kv: str(kv[0]))):
            top = max(e["pretrain_tokens"] for e in es)
            es = sorted((e for e in es if e["pretrain_tokens"] == top), key=lambda e: e["fraction"])
            x = [fractions.index(e["fraction"]) for e in es]
            y = [e["post_ft_loss"]["mean"] for e in es]
            err = [e["post_ft_loss"]["std"] or 0 for e in es]
            label = f"{key[0] + ' ' if many else ''}{key[1]} {key[2]}".strip() + f" @{format_count(top)}"
            ax.errorbar(x, y, yerr=err, fmt="s--" if key[2] else "o-", capsize=3, color=f"C{i % 10}", label=label)
        ax.set(xticks=range(len(fractions)), xticklabels=[f"{f * 100:g}%" for f in fractions],
               xlabel="domain fraction in pretraining", ylabel="best post-FT domain test loss")
        ax.legend(fontsize=8)
    return _save(fig, path)


def plot_post_ft_vs_tokens(report: dict, path: Path) -> Path | None:
    """Post-FT loss against the pretraining tokens of the checkpoint finetuned (mean ± std over
    seeds), per domain, for every setup finetuned at more than one checkpoint: the compute
    multiplier is where an SPT curve reaches NPT's last point (dotted line)."""
    rows = [e for e in report["table"] if e["finetune"] == "FT"]
    curves = defaultdict(list)
    for e in rows:
        curves[(str(e["domain"]), e["model"], e["setup"])].append(e)
    curves = {k: sorted(v, key=lambda e: e["pretrain_tokens"]) for k, v in curves.items() if len(v) > 1}
    if not curves:
        return None
    fig, panels = _panels(sorted({k[0] for k in curves}), "after finetuning, by pretraining checkpoint")
    many = len({k[1] for k in curves}) > 1
    for domain, ax in panels.items():
        mine = sorted((k for k in curves if k[0] == domain), key=lambda k: (k[1], _setup_rank(
            curves[k][0]["fraction"], curves[k][0]["window"])))
        for i, key in enumerate(mine):
            es = curves[key]
            ax.errorbar([e["pretrain_tokens"] for e in es], [e["post_ft_loss"]["mean"] for e in es],
                        yerr=[e["post_ft_loss"]["std"] or 0 for e in es], fmt="o-", capsize=3, color=f"C{i % 10}",
                        label=(f"{key[1]} " if many else "") + key[2])
            if key[2] == "NPT":
                ax.axhline(es[-1]["post_ft_loss"]["mean"], color=f"C{i % 10}", ls=":", lw=1)
        ax.set(xscale="log", xlabel="pretraining tokens at the finetuned checkpoint",
               ylabel="best post-FT domain test loss")
        ax.legend(fontsize=8)
    return _save(fig, path)


def plot_frontier(report: dict, path: Path) -> Path | None:
    """General val loss against domain test loss after finetuning, per domain: lower-left is better."""
    pts = [r for r in report["finetune_runs"] if r["general_after"] is not None]
    if not pts:
        return None
    fig, panels = _panels(sorted({str(r["domain"]) for r in pts}), "forgetting frontier")
    many = len({r["model"] for r in pts}) > 1  # a larger model gets its own colours
    label = lambda r: (f"{r['model']} " if many else "") + f"{r['setup']} {r['finetune']}"  # noqa: E731
    ranked = {label(r): (r["model"], _setup_rank(r["fraction"], r["window"]), r["finetune"]) for r in pts}
    labels = sorted(ranked, key=ranked.get)
    colours = {lab: f"C{i % 10}" for i, lab in enumerate(labels)}
    for domain, ax in panels.items():
        mine = [r for r in pts if str(r["domain"]) == domain]
        for lab in labels:
            group = [r for r in mine if label(r) == lab]
            if group:
                ax.plot([r["post_ft_loss"] for r in group], [r["general_after"] for r in group], "o",
                        color=colours[lab], label=lab)
        front = pareto_front([r["post_ft_loss"] for r in mine], [r["general_after"] for r in mine])
        ax.plot([mine[i]["post_ft_loss"] for i in front], [mine[i]["general_after"] for i in front], "k:", lw=1,
                label="Pareto front")
        ax.set(xlabel="domain test loss after FT", ylabel="general val loss after FT")
        ax.legend(fontsize=8)
    return _save(fig, path)


def plot_fit(fit: dict, curves: list[Curve], path: Path) -> Path:
    """Observed domain test (o) and train (x) loss per fraction, with the law (or the
    per-fraction curves) as lines; a held-out fraction is dashed, NPT left out of the law
    dotted (its own curve). The y axis spans every observation and any prediction within half
    that span again; a prediction beyond is drawn clipped at the edge, marked with triangles
    and said in the legend, so nothing is cut off silently. The fit's warnings are printed on it."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 5.2))
    per = {p["fraction"]: p for p in fit["per_fraction"]}
    unit = (fit.get("units") or {}).get("token_unit", 1.0)
    npt_out = fit.get("npt") is not None and not fit["npt"]["enters"]
    observed = np.concatenate([np.concatenate([c.test, c.train]) for c in curves]) if curves else np.zeros(0)
    observed = observed[np.isfinite(observed)]
    lines = []
    for i, c in enumerate(curves):
        color = f"C{i % 10}"
        own = fit["law"] is None or (c.fraction == 0 and npt_out)
        label = f"{c.fraction:g}" + (" (NPT, outside the law)" if c.fraction == 0 and npt_out and fit["law"] else "")
        ax.plot(c.tokens, c.test, "o", color=color, ms=4, label=label)
        ax.plot(c.tokens, c.train, "x", color=color, ms=4)
        T = np.logspace(np.log10(c.tokens.min()), np.log10(c.tokens.max()), 50)
        coef = fraction_coefficients(per[c.fraction]) if own and c.fraction in per else (
            law_coefficients(fit["law"]["params"], c.fraction, unit) if fit["law"] else None)
        if coef:
            held = fit["holdout_fraction"] is not None and np.isclose(c.fraction, fit["holdout_fraction"])
            lines.append((T, curve_test(coef, T), ":" if own and fit["law"] else "--" if held else "-", color, held))
    bottom, top = fit_axis(observed, [y for _, y, *_ in lines])
    clipped = False
    for T, y, style, color, held in lines:
        ax.plot(T, np.clip(y, bottom, top), style, color=color, lw=1.5 if held else 1)
        for side, mask, marker in (("top", y > top, "^"), ("bottom", y < bottom, "v")):
            if mask.any():
                clipped = True
                ax.plot(T[mask][::5], np.full(len(T[mask][::5]), top if side == "top" else bottom), marker,
                        color=color, ms=7, clip_on=False)
    if clipped:
        ax.plot([], [], "k^", ms=6, label="prediction beyond the axis (clipped)")
    ax.set_ylim(bottom, top)
    title = ("joint law" if fit["law"] else "per-fraction curves") + ": test (o), train (x)"
    if fit["holdout_fraction"] is not None and fit.get("holdout"):
        title += f"; held out {fit['holdout_fraction']:g} (dashed): {fit['holdout']['test']['mean_abs_rel_error_pct']:.3g}%"
    ax.set(xscale="log", xlabel="pretraining tokens", ylabel="domain loss (nats); axis not from 0", title=title)
    ws = fit.get("warnings") or []
    if ws:
        kinds = sorted({w["kind"] for w in ws})
        fig.text(0.01, 0.995, f"{len(ws)} WARNING(S) ({', '.join(kinds)}): read them in fit.json or mixer fit's output",
                 color="C3", fontsize=9, va="top", weight="bold")
    ax.legend(title="fraction", fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    return _save(fig, path)


def fit_axis(observed: np.ndarray, predictions: list[np.ndarray]) -> tuple[float, float]:
    """fit.png's y range: every observation, and each prediction as far as half the observed
    span beyond it (a prediction further out is clipped and marked by the caller), padded 5%."""
    lo, hi = (float(observed.min()), float(observed.max())) if len(observed) else (0.0, 1.0)
    span = max(hi - lo, 1e-3)
    for y in predictions:
        y = y[np.isfinite(y)]
        if len(y):
            lo, hi = min(lo, max(float(y.min()), lo - 0.5 * span)), max(hi, min(float(y.max()), hi + 0.5 * span))
    pad = 0.05 * max(hi - lo, 1e-3)
    return lo - pad, hi + pad


AXIS_NAMES = {"L_ft": "L_ft: new-task test loss after FT", "L_ret": "L_ret: post-training domain test loss after FT",
              "L_pre": "L_pre: general val loss after FT", "L_im": "L_im: post-training domain test loss"}


def plot_stage_frontier(report: dict, path: Path, x: str, y: str) -> Path | None:
    """Paper 2's frontier of two of L_ft, L_ret, L_pre over the three-stage chains, one panel
    per (D_post -> D_ft), one colour per early exposure, the Pareto front dotted."""
    pts = [r for r in report.get("early_exposure_runs", []) if r[x] is not None and r[y] is not None]
    if not pts:
        return None
    pair = lambda r: f"{r['post_domain']} -> {r['ft_domain']}"  # noqa: E731
    fig, panels = _panels(sorted({pair(r) for r in pts}), f"frontier ({x}, {y}): lower-left is better")
    setups = sorted({r["setup"] for r in pts}, key=lambda s: (next(r["lam"] for r in pts if r["setup"] == s) or 0, s))
    colours = {s: f"C{i % 10}" for i, s in enumerate(setups)}
    for name, ax in panels.items():
        mine = [r for r in pts if pair(r) == name]
        for s in setups:
            group = [r for r in mine if r["setup"] == s]
            if group:
                ax.plot([r[x] for r in group], [r[y] for r in group], "o", color=colours[s], label=s)
        front = pareto_front([r[x] for r in mine], [r[y] for r in mine])
        ax.plot([mine[i][x] for i in front], [mine[i][y] for i in front], "k:", lw=1, label="Pareto front")
        ax.set(xlabel=AXIS_NAMES[x], ylabel=AXIS_NAMES[y])
        ax.legend(fontsize=8)
    return _save(fig, path)
