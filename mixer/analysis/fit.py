"""`mixer fit`: runs -> the curves per fraction, the overfitting scaling law, fit.json.

The maths is in mixer/analysis/scaling.py; this module picks the runs, assembles the
curves and gains, and formats the result.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from mixer import __version__
from mixer.analysis.diagnostics import format_warnings
from mixer.analysis.scaling import STARTS, Curve, fit_law
from mixer.formats.fit import FIT_FORMAT
from mixer.errors import MixerError, UsageError
from mixer.formats.run import Run, find_parent, mix_domain_tokens
from mixer.units import format_count


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
    samples = sorted({str(e.domain_train_sample) for r in mine for e in r.evals
                      if e.domain_train_loss is not None and e.domain_train_sample is not None})
    if len(samples) > 1:
        notes.append(f"domain train losses are on {len(samples)} different samples ({'; '.join(samples)}): the "
                     "train-test gaps are not comparable across runs; re-evaluate with one --train-tokens/--train-seed")
    points: dict[float, list] = defaultdict(list)
    for r in mine:
        # One point per checkpoint: `final` repeats the last step's tokens (and losses), which
        # would count that checkpoint twice.
        seen = {e.tokens: e for e in r.evals
                if e.tokens > 0 and (e.domain_test_loss is not None or e.domain_train_loss is not None)}
        points[r.fraction] += [(t, e.domain_train_loss, e.domain_test_loss) for t, e in seen.items()]
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
        # Before finetuning: its own `start` row (the same samples as after), else the parent's row.
        before = next((e for e in r.all_evals() if e.tokens == 0), None) or parent.eval_at(
            r.meta.get("parent_checkpoint"), r.pretrain_tokens)
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


def build_fit(inputs: dict, holdout: float | None = None, loss: str = "sse", starts: int = STARTS,
              seed: int = 0) -> dict:
    """fit.json: the law (or what could be fitted) with everything that made it."""
    curves = inputs["curves"]
    if not curves:
        raise MixerError(f"no domain losses in the pretraining runs of {inputs['model']}/{inputs['domain']}; "
                         "run mixer eval on them first")
    body = fit_law(curves, inputs["gains"] or None, holdout=holdout, loss=loss, starts=starts, seed=seed)
    tokens = np.concatenate([c.tokens for c in curves])
    return {"format": FIT_FORMAT, "mixer_version": __version__, "model": inputs["model"], "domain": inputs["domain"],
            "general": inputs["general"], "domain_tokens": inputs["domain_tokens"], "holdout_fraction": holdout,
            "data": {"fractions": [c.fraction for c in curves], "points": int(len(tokens)),
                     "token_range": [float(tokens.min()), float(tokens.max())]},
            **body, "notes": inputs["notes"], "runs": inputs["runs"]}


def format_fit(fit: dict) -> str:
    unit = (fit.get("units") or {}).get("token_unit", 1.0)
    lines = [f"fit {fit['model']}/{fit['domain']}: {len(fit['data']['fractions'])} fraction(s) "
             f"({', '.join(f'{d:g}' for d in fit['data']['fractions'])}), {fit['data']['points']} checkpoints, "
             f"tokens {format_count(fit['data']['token_range'][0])}..{format_count(fit['data']['token_range'][1])}; "
             f"T below is tokens / {format_count(unit)}"]
    lines += format_warnings(fit)
    if fit.get("npt") and fit["npt"]["enters"]:  # when it does not, a warning above says so
        lines.append(f"NPT: {fit['npt']['why']}")
    stage = (fit.get("stage1") or {}).get("train")
    if stage:
        shared = ("no fraction's domain loss falls: constants" if stage["flat"] else
                  f"A_train={stage['A_train']:.4g}, b_train_g={stage['b_train_g']:.4f}, "
                  f"b_train_s={stage['b_train_s']:.4f} (b_train linear in d)")
        lines.append(f"stage 1 (squared error, exponents shared across the law's fractions): {shared}")
    for p in fit["per_fraction"]:
        t, g = p["train"], p["gap"]
        if t is None:
            txt = "not fitted"
        else:
            form = f"{t['C']:.4f} (flat)" if t.get("flat") else f"{t['A']:.4g} T^{t['b']:.3f} + {t['C']:.4f}"
            # At fraction 0 the curve is the test loss (see scaling.Curve.target).
            txt = f"L_{'test' if p['fraction'] == 0 else 'train'} = {form} ({t['mean_abs_rel_error_pct']:.2f}% mean error)"
        if g:
            txt += f"; gap = {g['G']:.4g} T^{g['g']:.3f}"
        lines.append(f"  fraction {p['fraction']:g}: {txt}")
    for sc in fit.get("shape_checks") or []:
        res = ", ".join(f"{r['fraction']:g}: {r['residual']:+.3g}" for r in sc["residuals"])
        rms = "-" if sc["rms_residual"] is None else f"{sc['rms_residual']:.3g}"
        lines.append(f"stage 2 shape check {sc['shape']}: rms residual {rms} ({sc['unit']}), {sc['dof']} dof; "
                     f"residuals {res or 'none'}" + (f"; {sc['note']}" if sc.get("note") else ""))
    if fit["law"]:
        law, p = fit["law"], fit["law"]["params"]
        lines.append(f"stage 3 joint law on fractions {', '.join(f'{d:g}' for d in law['fractions'])} "
                     f"({'squared error' if law.get('loss', 'sse') == 'sse' else 'Huber on log loss'}; fraction as a "
                     f"fraction, T = tokens / {format_count(unit)}): " + ", ".join(f"{k}={v:.4g}" for k, v in p.items()))
        worst = max(e["test"]["mean_abs_rel_error_pct"] for e in law["errors"] if e["test"])
        lines.append(f"  test-loss error per curve: worst mean {worst:.2f}%; best objective {law['objective']:.4g} of "
                     f"{law['starts']} seeded starts (reached by {law.get('starts_at_best', '?')}), "
                     f"{'converged' if law['converged'] else 'NOT converged'}; "
                     f"{len(law.get('at_bound') or [])} parameter(s) at a bound")
        lines += [f"  check {'ok  ' if c['ok'] else 'FAIL'} {c['check']}" for c in fit["checks"]]
    if fit["holdout"]:
        h = fit["holdout"]["test"]
        lines.append(f"held-out fraction {fit['holdout']['fraction']:g}: test loss predicted within "
                     f"{h['mean_abs_rel_error_pct']:.2f}% mean, {h['max_abs_rel_error_pct']:.2f}% max over its "
                     f"{fit['holdout']['points']} checkpoints")
        for b in fit["holdout"].get("baselines") or []:
            lines.append(f"  naive baseline '{b['name']}' ({b['what']}): {b['mean_abs_rel_error_pct']:.2f}% mean, "
                         f"{b['max_abs_rel_error_pct']:.2f}% max; the law {'beats' if b['law_beats'] else 'does NOT beat'} it")
        dec = fit["holdout"].get("decomposition")
        if dec:
            floor = ("" if dec["floor_nats"] is None else
                     f" (floor C(d) {dec['floor_nats']:+.3f}, the rest {dec['train_rest_nats']:+.3f})")
            lines.append(f"  the law's mean signed error, law - observed: test {dec['test_nats']:+.3f} nats = train term "
                         f"{dec['train_nats']:+.3f}{floor} + gap term {dec['gap_nats']:+.3f}")
        on = fit["holdout"].get("onset")
        if on:
            seen = f"{format_count(on['observed_tokens'])} tokens" if on["observed_tokens"] else \
                f"none up to {format_count(on['last_checkpoint_tokens'])} tokens"
            want = f"{format_count(on['predicted_tokens'])} tokens" if on["predicted_tokens"] else \
                f"none up to {format_count(10 * on['last_checkpoint_tokens'])} tokens"
            lines.append(f"  onset of overfitting: observed {seen}, predicted {want}")
        for pt in fit["holdout"].get("curve") or []:
            if pt["test_observed"] is not None:
                lines.append(f"    {format_count(pt['tokens']):>8} tokens: test {pt['test_observed']:.4f} observed, "
                             f"{pt['test_predicted']:.4f} predicted")
    for g in fit["finetune_gain"]:
        expr = f"{g['a']:.4g} T^{g['b']:.3f} + {g['c']:.4f}" if g["kind"] == "power" else f"{g['c']:.4f}"
        lines.append(f"  finetuning gain at {g['fraction']:g}: dL = {expr} ({g['kind']}, {g['points']} point(s); "
                     "T in tokens)")
    lines += [f"not fitted: {n['what']}: {n['why']}" for n in fit["not_fitted"]]
    lines += [f"note: {n}" for n in fit["notes"]]
    return "\n".join(lines)
