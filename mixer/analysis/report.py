"""`mixer report`: runs -> the paper's comparisons as tables (Markdown, JSON) and PNG plots.

A row is one (model, domain, pretraining setup, finetuning kind, pretraining tokens) cell
with its seeds; every metric is computed per seed where the NPT baseline has that seed and
summarised as mean ± spread. Pretraining setups: NPT (fraction 0), SPT (fraction d over the
whole run) and SCPT (domain only inside a late window).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from mixer import __version__
from mixer.formats.atomic import atomic_open, write_json
from mixer.errors import MixerError, UsageError
from mixer.analysis.metrics import compute_multiplier, forgetting, gap_closed, mean_spread, pareto_front, relative_gain
from mixer.formats.run import Run, find_parent, mix_domain_tokens
from mixer.formats.fit import FIT_FORMAT
from mixer.analysis.scaling import Curve, curve_test, fit_law, fraction_coefficients, law_coefficients
from mixer.units import format_count


def setup_of(run: Run) -> str:
    """NPT, SPT 2% or SCPT 1% @0.9-1 for a pretraining run."""
    if run.fraction == 0:
        return "NPT"
    pct = f"{run.fraction * 100:g}%"
    return f"SPT {pct}" if run.full_window else f"SCPT {pct} @{run.window[0]:g}-{run.window[1]:g}"


def finetune_of(run: Run) -> str:
    if run.kind == "replay":
        share = 1 - run.meta["fraction"] if run.meta.get("fraction") is not None else None
        return "replay" if share is None else f"replay {share * 100:g}%"
    return "FT"


def finetune_rows(runs: list[Run]) -> tuple[list[dict], list[str]]:
    """One record per finetune/replay run: its parent's setup and its best post-FT losses."""
    rows, notes = [], []
    for r in runs:
        if r.kind == "pretrain":
            continue
        parent = find_parent(r, runs)
        if parent is None:
            notes.append(f"{r.path}: parent run {r.parent!r} not found; left out of the comparisons")
            continue
        best = r.best_eval()
        if best is None:
            notes.append(f"{r.path}: no domain test loss in evals.jsonl; left out")
            continue
        # The model before finetuning: a 0-token evaluation (any grid point: all start from the
        # same checkpoint), else the parent's evaluation of the checkpoint finetuned from.
        before = next((e for e in r.all_evals() if e.tokens == 0), None) or parent.eval_at(
            r.meta.get("parent_checkpoint"), r.pretrain_tokens)
        g0 = before.general_val_loss if before else None
        g1 = best.general_val_loss
        rows.append({
            "model": r.model, "model_params": r.model_params or parent.model_params,
            "domain": r.domain or parent.domain, "setup": setup_of(parent), "fraction": parent.fraction,
            "window": list(parent.window), "finetune": finetune_of(r), "pretrain_tokens": r.pretrain_tokens,
            "seed": parent.seed, "post_ft_loss": best.domain_test_loss, "best_checkpoint": best.checkpoint,
            "general_before": g0, "general_after": g1,
            "forgetting": forgetting(g0, g1) if g0 is not None and g1 is not None else None,
            "run": str(r.path), "parent": str(parent.path),
        })
    return rows, notes


def build_report(runs: list[Run]) -> dict:
    """Everything the report shows, as plain data (JSON-ready)."""
    rows, notes = finetune_rows(runs)
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        groups[(row["model"], row["domain"], row["setup"], row["finetune"], row["pretrain_tokens"])].append(row)
    npt = {(m, d, ft, t): g for (m, d, s, ft, t), g in groups.items() if s == "NPT"}
    table = []
    for (model, domain, setup, ft, tokens), g in sorted(groups.items(), key=lambda kv: _order(kv[0], kv[1][0])):
        base = npt.get((model, domain, ft, tokens))
        entry = {"model": model, "model_params": g[0]["model_params"], "domain": domain, "setup": setup,
                 "fraction": g[0]["fraction"], "window": g[0]["window"], "finetune": ft, "pretrain_tokens": tokens,
                 "seeds": sorted(r["seed"] for r in g),
                 "post_ft_loss": mean_spread([r["post_ft_loss"] for r in g]).to_dict(),
                 "forgetting": _spread([r["forgetting"] for r in g]), "relative_gain_pct": None}
        if base and setup != "NPT":
            by_seed = {r["seed"]: r["post_ft_loss"] for r in base}
            base_mean = mean_spread(list(by_seed.values())).mean
            entry["relative_gain_pct"] = mean_spread(
                [relative_gain(by_seed.get(r["seed"], base_mean), r["post_ft_loss"]) for r in g]).to_dict()
        table.append(entry)
    return {"format": "mixer-report/1", "mixer_version": __version__, "runs": [str(r.path) for r in runs],
            "table": table, "compute_multiplier": _multipliers(table), "gap_closed": _gaps(table),
            "pretrain": _pretrain_summary(runs), "finetune_runs": rows, "notes": notes}


def _order(key: tuple, row: dict) -> tuple:
    """Model, domain, finetuning, tokens; then NPT, SPT by fraction, SCPT."""
    model, domain, setup, ft, tokens = key
    rank = 0 if setup == "NPT" else 1 if setup.startswith("SPT") else 2
    return (str(model), str(domain), ft, tokens, rank, row["fraction"], setup)


def _spread(values: list) -> dict | None:
    have = [v for v in values if v is not None]
    return mean_spread(have).to_dict() if have else None


def _multipliers(table: list[dict]) -> list[dict]:
    """T_NPT / T_SPT against NPT's largest pretraining budget, over the SPT post-FT loss curve
    (finetunes from several pretraining checkpoints; with one, only a bound is known)."""
    out = []
    cells = defaultdict(list)
    for e in table:
        cells[(e["model"], e["domain"], e["setup"], e["finetune"])].append(e)
    for (model, domain, setup, ft), es in cells.items():
        base = cells.get((model, domain, "NPT", ft))
        if setup == "NPT" or not base:
            continue
        top = max(base, key=lambda e: e["pretrain_tokens"])
        es = sorted(es, key=lambda e: e["pretrain_tokens"])
        m = compute_multiplier(top["pretrain_tokens"], top["post_ft_loss"]["mean"],
                               [e["pretrain_tokens"] for e in es], [e["post_ft_loss"]["mean"] for e in es])
        out.append({"model": model, "domain": domain, "setup": setup, "finetune": ft, "value": m.value,
                    "bound": m.bound, "text": str(m), "npt_tokens": top["pretrain_tokens"], "spt_points": len(es)})
    return out


def _gaps(table: list[dict]) -> list[dict]:
    """Gap closed by each small-model SPT row towards every larger NPT model (same domain,
    finetuning and tokens). Larger means more parameters (run.json model_params)."""
    out = []
    npt = {(e["model"], e["domain"], e["finetune"], e["pretrain_tokens"]): e for e in table if e["setup"] == "NPT"}
    for small in (e for e in table if e["setup"] != "NPT"):
        mine = npt.get((small["model"], small["domain"], small["finetune"], small["pretrain_tokens"]))
        if mine is None or not small["model_params"]:
            continue
        for (model, domain, ft, tokens), big in npt.items():
            if (domain, ft, tokens) != (small["domain"], small["finetune"], small["pretrain_tokens"]):
                continue
            if not big["model_params"] or big["model_params"] <= small["model_params"]:
                continue
            if big["post_ft_loss"]["mean"] == mine["post_ft_loss"]["mean"]:
                continue  # no gap to close
            out.append({"small": small["model"], "large": model, "domain": domain, "setup": small["setup"],
                        "finetune": ft, "pretrain_tokens": tokens,
                        "gap_closed_pct": gap_closed(mine["post_ft_loss"]["mean"], small["post_ft_loss"]["mean"],
                                                     big["post_ft_loss"]["mean"])})
    return out


def _pretrain_summary(runs: list[Run]) -> list[dict]:
    out = []
    for r in runs:
        if r.kind != "pretrain" or not r.evals:
            continue
        last = r.evals[-1]
        out.append({"run": str(r.path), "model": r.model, "domain": r.domain, "setup": setup_of(r), "seed": r.seed,
                    "tokens": last.tokens, "domain_test_loss": last.domain_test_loss,
                    "domain_train_loss": last.domain_train_loss, "general_val_loss": last.general_val_loss})
    return out


# ---- human and file output -----------------------------------------------------------------


def format_table(report: dict) -> str:
    """The main comparison as a fixed-width table (also the body of report.md)."""
    from mixer.cli.common import table

    rows = []
    for e in report["table"]:
        rg = e["relative_gain_pct"]
        rows.append([e["model"], e["domain"] or "-", e["setup"], e["finetune"], format_count(e["pretrain_tokens"]),
                     len(e["seeds"]), _fmt(e["post_ft_loss"]), _fmt(rg, "%"), _fmt(e["forgetting"])])
    return table(rows, ["model", "domain", "pretraining", "finetune", "tokens", "seeds", "post-FT loss",
                        "rel. gain", "forgetting"])


def format_report(report: dict) -> str:
    parts = [format_table(report) if report["table"] else "no finetune runs with a known parent: nothing to compare"]
    for m in report["compute_multiplier"]:
        parts.append(f"compute multiplier {m['model']}/{m['domain']} {m['setup']} ({m['finetune']}): {m['text']} "
                     f"vs NPT at {format_count(m['npt_tokens'])} tokens ({m['spt_points']} SPT checkpoint(s))")
    for g in report["gap_closed"]:
        parts.append(f"gap closed {g['small']} {g['setup']} vs {g['large']} NPT ({g['domain']}): {g['gap_closed_pct']:.1f}%")
    parts += [f"note: {n}" for n in report["notes"]]
    return "\n".join(parts)


def write_report(report: dict, runs: list[Run], out: Path) -> list[Path]:
    """report.md, report.json and the plots into `out`; returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    plots = [p for p in (plot_domain_curves(runs, out / "domain_loss_vs_tokens.png"),
                         plot_post_ft(report, out / "post_ft_vs_fraction.png"),
                         plot_frontier(report, out / "frontier.png")) if p]
    report = report | {"plots": [p.name for p in plots]}
    write_json(out / "report.json", report)
    md = ["# mixer report", "", f"{len(report['runs'])} runs; post-FT loss is the best (early-stopped) domain test "
          "loss over checkpoints and the LR/warmup grid; relative gain = 100 (L_NPT - L) / L_NPT; forgetting = "
          "rise of general val loss from the pretrained checkpoint to the best finetuned one; mean ± std over seeds "
          "(relative gain paired with the NPT run of the same seed where there is one, else with the NPT mean).",
          "", "```", format_report(report), "```", ""] + [f"![{p.stem}]({p.name})" for p in plots]
    with atomic_open(out / "report.md", "w") as f:
        f.write("\n".join(md) + "\n")
    return [out / "report.md", out / "report.json"] + plots


def _fmt(s: dict | None, unit: str = "") -> str:
    if s is None:
        return "-"
    return f"{s['mean']:.4g}{unit}" if s["std"] is None else f"{s['mean']:.4g}{unit} ± {s['std']:.2g}"


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
    many = len({r.model for r in pre}) > 1  # the model joins the label only when it varies
    family = lambda r: (f"{r.model} " if many else "") + setup_of(r)  # noqa: E731
    rank = lambda r: _setup_rank(r.fraction, r.window)  # noqa: E731
    ranked = {setup_of(r): rank(r) for r in pre}
    colours = {s: f"C{i % 10}" for i, s in enumerate(sorted(ranked, key=ranked.get))}
    for domain, ax in panels.items():
        mine = [r for r in pre if str(r.domain) == domain]
        labelled = set()
        for r in sorted(mine, key=lambda r: (r.model, rank(r), r.seed)):
            pts = [(e.tokens, e.domain_test_loss) for e in r.evals if e.domain_test_loss is not None and e.tokens > 0]
            name = family(r)
            ax.plot(*zip(*pts), "o-", ms=3, color=colours[setup_of(r)], label=None if name in labelled else name)
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


def plot_frontier(report: dict, path: Path) -> Path | None:
    """General val loss against domain test loss after finetuning, per domain: lower-left is better."""
    pts = [r for r in report["finetune_runs"] if r["general_after"] is not None]
    if not pts:
        return None
    fig, panels = _panels(sorted({str(r["domain"]) for r in pts}), "forgetting frontier")
    label = lambda r: f"{r['setup']} {r['finetune']}"  # noqa: E731
    ranked = {label(r): (_setup_rank(r["fraction"], r["window"]), r["finetune"]) for r in pts}
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


# ---- the scaling-law fit: runs in, fit.json and its plot out ---------------------------------


def fit_inputs(runs: list[Run], model: str | None = None, domain: str | None = None) -> dict:
    """Curves per fraction (pretraining runs over the whole budget, seeds pooled) and
    finetuning gains dL = L_test(pretrained at T) - L_test(after best FT) for one model/domain."""
    pre = [r for r in runs if r.kind == "pretrain"]
    pairs = sorted({(r.model, r.domain) for r in pre if r.domain is not None})
    pick = [(m, d) for m, d in pairs if (model is None or m == model) and (domain is None or d == domain)]
    if not pick:
        have = ", ".join(f"{m}/{d}" for m, d in pairs) or "none"
        raise UsageError(f"no pretraining runs with a domain for model={model or 'any'} domain={domain or 'any'} "
                         f"(model/domain in these runs: {have})")
    if len(pick) > 1:
        raise UsageError(f"runs span several model/domain pairs ({', '.join(f'{m}/{d}' for m, d in pick)}); "
                         "choose one with --model and --domain")
    model, domain = pick[0]
    # NPT mixes may have no domain source; their runs belong to every domain of the model.
    mine = [r for r in pre if r.model == model and r.domain in (domain, None)]
    notes = [f"{r.path}: late window {r.window} (SCPT) is outside the law; left out" for r in mine if not r.full_window]
    mine = [r for r in mine if r.full_window]
    points: dict[float, list] = defaultdict(list)
    for r in mine:
        points[r.fraction] += [(e.tokens, e.domain_train_loss, e.domain_test_loss) for e in r.evals
                               if e.tokens > 0 and (e.domain_test_loss is not None or e.domain_train_loss is not None)]
    curves = []
    for d, pts in sorted(points.items()):
        if not pts:
            continue
        T, tr, te = (np.array([np.nan if v is None else v for v in col], float) for col in zip(*sorted(pts)))
        curves.append(Curve(d, T, tr, te))
    gains: dict[float, list] = defaultdict(list)
    fitted = {r.path.resolve() for r in mine}
    for r in runs:
        parent = find_parent(r, runs) if r.kind == "finetune" else None
        if parent is None or parent.path.resolve() not in fitted:
            continue
        before = parent.eval_at(r.meta.get("parent_checkpoint"), r.pretrain_tokens)
        best = r.best_eval()
        if before and best and before.domain_test_loss is not None:
            gains[parent.fraction].append((r.pretrain_tokens, before.domain_test_loss - best.domain_test_loss))
        else:
            notes.append(f"{r.path}: no domain test loss of its parent at {format_count(r.pretrain_tokens)} tokens; "
                         "left out of the finetuning gain")
    D = next((t for t in (mix_domain_tokens(r) for r in mine if r.fraction > 0) if t), None)
    return {"model": model, "domain": domain, "general": next((r.general for r in mine if r.general), None),
            "curves": curves, "gains": {d: (np.array([t for t, _ in g], float), np.array([x for _, x in g], float))
                                        for d, g in gains.items()},
            "domain_tokens": D, "runs": [str(r.path) for r in mine], "notes": notes}


def build_fit(inputs: dict, holdout: float | None = None) -> dict:
    """fit.json: the law (or what could be fitted) with everything that made it."""
    curves = inputs["curves"]
    if not curves:
        raise MixerError(f"no domain losses in the pretraining runs of {inputs['model']}/{inputs['domain']}; "
                         "run mixer eval on them first")
    body = fit_law(curves, inputs["gains"] or None, holdout=holdout)
    tokens = np.concatenate([c.tokens for c in curves])
    return {"format": FIT_FORMAT, "mixer_version": __version__, "model": inputs["model"], "domain": inputs["domain"],
            "general": inputs["general"], "domain_tokens": inputs["domain_tokens"], "holdout_fraction": holdout,
            "data": {"fractions": [c.fraction for c in curves], "points": int(len(tokens)),
                     "token_range": [float(tokens.min()), float(tokens.max())]},
            **body, "notes": inputs["notes"], "runs": inputs["runs"]}


def format_fit(fit: dict) -> str:
    lines = [f"fit {fit['model']}/{fit['domain']}: {len(fit['data']['fractions'])} fraction(s) "
             f"({', '.join(f'{d:g}' for d in fit['data']['fractions'])}), {fit['data']['points']} checkpoints, "
             f"tokens {format_count(fit['data']['token_range'][0])}..{format_count(fit['data']['token_range'][1])}"]
    for p in fit["per_fraction"]:
        t, g = p["train"], p["gap"]
        if t is None:
            txt = "not fitted"
        else:
            form = f"{t['C']:.4f} (flat)" if t.get("flat") else f"{t['A']:.4g} T^{t['b']:.3f} + {t['C']:.4f}"
            # At fraction 0 the curve is the test loss (see scaling.fit_fraction).
            txt = f"L_{'test' if p['fraction'] == 0 else 'train'} = {form} ({t['mean_abs_rel_error_pct']:.2f}% mean error)"
        if g:
            txt += f"; gap = {g['G']:.4g} T^{g['g']:.3f}"
        lines.append(f"  fraction {p['fraction']:g}: {txt}")
    if fit["law"]:
        law, p = fit["law"], fit["law"]["params"]
        lines.append("joint law (fraction as a fraction, tokens in tokens): "
                     + ", ".join(f"{k}={v:.4g}" for k, v in p.items()))
        worst = max(e["test"]["mean_abs_rel_error_pct"] for e in law["errors"] if e["test"])
        lines.append(f"  test-loss error per curve: worst mean {worst:.2f}%; L-BFGS from {law['starts']} starts, "
                     f"{'converged' if law['converged'] else 'NOT converged'}")
        lines += [f"  check {'ok  ' if c['ok'] else 'FAIL'} {c['check']}" for c in fit["checks"]]
    if fit["holdout"]:
        h = fit["holdout"]["test"]
        lines.append(f"held-out fraction {fit['holdout']['fraction']:g}: test loss predicted within "
                     f"{h['mean_abs_rel_error_pct']:.2f}% mean, {h['max_abs_rel_error_pct']:.2f}% max")
    for g in fit["finetune_gain"]:
        expr = f"{g['a']:.4g} T^{g['b']:.3f} + {g['c']:.4f}" if g["kind"] == "power" else f"{g['c']:.4f}"
        lines.append(f"  finetuning gain at {g['fraction']:g}: dL = {expr} ({g['kind']}, {g['points']} point(s))")
    lines += [f"not fitted: {n['what']}: {n['why']}" for n in fit["not_fitted"]]
    lines += [f"note: {n}" for n in fit["notes"]]
    return "\n".join(lines)


def plot_fit(fit: dict, curves: list[Curve], path: Path) -> Path:
    """Observed domain test (o) and train (x) loss per fraction, with the law (or the
    per-fraction curves) as lines; a held-out fraction is dashed."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    per = {p["fraction"]: p for p in fit["per_fraction"]}
    for i, c in enumerate(curves):
        color = f"C{i % 10}"
        ax.plot(c.tokens, c.test, "o", color=color, ms=4, label=f"{c.fraction:g}")
        ax.plot(c.tokens, c.train, "x", color=color, ms=4)
        T = np.logspace(np.log10(c.tokens.min()), np.log10(c.tokens.max()), 50)
        coef = law_coefficients(fit["law"]["params"], c.fraction) if fit["law"] else fraction_coefficients(per[c.fraction])
        if coef:
            held = fit["holdout_fraction"] is not None and np.isclose(c.fraction, fit["holdout_fraction"])
            ax.plot(T, curve_test(coef, T), "--" if held else "-", color=color, lw=1)
    ax.set(xscale="log", xlabel="pretraining tokens", ylabel="domain loss (nats)",
           title=("joint law" if fit["law"] else "per-fraction curves") + ": test (o), train (x)")
    ax.legend(title="fraction", fontsize=8)
    return _save(fig, path)
