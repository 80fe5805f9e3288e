"""`mixer report`: runs -> the papers' comparisons as tables (Markdown, JSON) and PNG plots.

Paper 1: a row is one (model, domain, pretraining setup, finetuning kind, pretraining
tokens) cell with its seeds; every metric is computed per seed where the NPT baseline has
that seed and summarised as mean ± spread. Pretraining setups: NPT (fraction 0), SPT
(fraction d over the whole run) and SCPT (domain only inside a late window).

Paper 2: a finetune whose parent is itself finetuned is the third stage of a pretrain ->
post-train (D_post) -> finetune (D_ft) chain; each chain gives L_im, L_ft, L_ret and L_pre
(mixer.analysis.metrics), grouped by the early exposure (the recipe's lambda, else the
pretraining run's epochs of D_post), and drawn as the (L_ft, L_ret) and (L_pre, L_ret)
Pareto frontiers.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path


from mixer import __version__
from mixer.analysis.metrics import (compute_multiplier, crossing, forgetting, gap_closed, mean_spread, relative_gain,
                                    saturation, stage_losses)
from mixer.analysis.plots import (plot_domain_curves, plot_frontier, plot_post_ft, plot_post_ft_vs_tokens,
                                  plot_stage_frontier)
from mixer.analysis.setups import finetune_of, setup_of
from mixer.formats.atomic import atomic_open
from mixer.formats.report import REPORT_FORMAT, write_report_json
from mixer.formats.run import Run, find_parent
from mixer.text import table
from mixer.units import format_count


def post_training_stages(runs: list[Run]) -> set[int]:
    """ids of the finetunes that are a paper-2 chain's post-training stage: some run finetunes
    them (or one of their grid points) on a new task. Their losses are paper 2's L_im, not a
    paper-1 comparison of pretraining setups."""
    out = set()
    for q in runs:
        if q.kind == "pretrain":
            continue
        p = find_parent(q, runs)
        if p is None or p.kind == "pretrain" or not is_new_task(q, p):
            continue
        out |= {id(r) for r in runs if r is p or any(s is p for s in r.subruns)}
    return out


def finetune_rows(runs: list[Run]) -> tuple[list[dict], list[str]]:
    """One record per finetune/replay run: its parent's setup and its best post-FT losses.
    The stages of paper-2 chains are left to early_exposure_rows: a report shows only the
    comparisons its runs support."""
    rows, notes = [], []
    post = post_training_stages(runs)
    for r in runs:
        if r.kind == "pretrain" or id(r) in post:
            continue
        parent = find_parent(r, runs)
        if parent is None:
            notes.append(f"{r.path}: parent run {r.parent!r} not found; left out of the comparisons")
            continue
        if is_new_task(r, parent):
            continue  # a third stage (paper 2): early_exposure_rows
        best = r.best_eval()
        if best is None:
            notes.append(f"{r.path}: no domain {r.select_on} loss in evals.jsonl to choose a checkpoint on; left out")
            continue
        # The model before finetuning: its `start` evaluation, on the finetune's own samples (any
        # grid point: all start from the same checkpoint), else the parent's evaluation of the
        # checkpoint finetuned from (runs made before finetunes scored their start).
        before = start_eval(r) or parent.eval_at(r.meta.get("parent_checkpoint"), r.pretrain_tokens)
        g0 = before.general_val_loss if before else None
        g1 = best.general_val_loss
        grid, chosen = finetune_protocol(r, best)
        rows.append({
            "model": r.model, "model_params": r.model_params or parent.model_params,
            "domain": r.domain or parent.domain, "setup": setup_of(parent), "fraction": parent.fraction,
            "window": list(parent.window), "finetune": finetune_of(r), "pretrain_tokens": r.pretrain_tokens,
            "seed": parent.seed, "post_ft_loss": best.domain_test_loss, "best_checkpoint": best.checkpoint,
            "selected_on": r.select_on, "selection_loss": getattr(best, f"domain_{r.select_on}_loss"),
            "grid": grid, "chosen": chosen, "at_cap": still_improving(r, best),
            "start_evaluated": start_eval(r) is not None,
            "general_before": g0, "general_after": g1,
            "forgetting": forgetting(g0, g1) if g0 is not None and g1 is not None else None,
            "forgetting_by_ratio": forgetting_by_ratio(r, before),
            "run": str(r.path), "parent": str(parent.path),
        })
    return rows, notes


def start_eval(run: Run):
    """The finetune's evaluation of the checkpoint it started from (row `start`, tokens 0)."""
    return next((e for e in run.all_evals() if e.tokens == 0), None)


def _owner(run: Run, e) -> Run:
    """The grid point (or the run itself) an evaluation belongs to."""
    return next((s for s in run.subruns if any(x is e for x in s.all_evals())), run)


def still_improving(run: Run, best) -> bool:
    """Was the chosen finetune still improving when its data ran out? Its winner is the last
    evaluation of its configuration: early stopping never fired, so a longer finetune might
    have gone lower (its loss is an upper bound)."""
    if best is None or best.tokens == 0:
        return False
    mine = [e for e in _owner(run, best).all_evals() if e.tokens > 0]
    return len(mine) > 1 and best.tokens == max(e.tokens for e in mine)


def forgetting_by_ratio(run: Run, before) -> dict[str, float]:
    """Forgetting of each grid point's own early-stopping choice, by its learning-rate ratio to
    the parent's rate: the winners of NPT and SPT grids sit at different rates, and forgetting
    grows with the rate, so setups are compared at one rate too."""
    if before is None or before.general_val_loss is None:
        return {}
    out = {}
    for point in run.subruns or [run]:
        ratio = (point.meta.get("hparams") or {}).get("lr_ratio")
        b = point.best_eval()
        if ratio is not None and b is not None and b.general_val_loss is not None:
            out[f"{float(ratio):.4g}"] = forgetting(before.general_val_loss, b.general_val_loss)
    return out


def finetune_protocol(run: Run, best) -> tuple[dict, dict]:
    """(the grid the finetune ran, the configuration chosen): rates absolute and as multiples
    of the parent's rate, warmups, schedule; a run without sub-runs is a one-point grid."""
    h = run.meta.get("hparams") or {}
    owner = next((s for s in run.subruns if any(e is best for e in s.all_evals())), run)
    mine = owner.meta.get("hparams") or {}
    chosen = {"run": owner.path.name if owner is not run else None, "lr": mine.get("lr"),
              "lr_ratio": mine.get("lr_ratio"), "warmup": mine.get("warmup"), "schedule": mine.get("schedule")}
    if "points" in h:
        points = h["points"]
        grid = {"lr": sorted({p["lr"] for p in points}), "lr_ratio": sorted({p["lr_ratio"] for p in points
                                                                          if p.get("lr_ratio") is not None}),
                "warmup": sorted({p["warmup"] for p in points}), "points": len(points)}
    elif "grid" in h:  # a grid made before the points were recorded
        subs = [s.meta.get("hparams") or {} for s in run.subruns]
        grid = {"lr": sorted({x.get("lr") for x in subs if x.get("lr") is not None}), "lr_ratio": [],
                "warmup": sorted({x.get("warmup") for x in subs if x.get("warmup") is not None}), "points": len(subs)}
    else:
        grid = {"lr": [h.get("lr")], "lr_ratio": [h["lr_ratio"]] if h.get("lr_ratio") is not None else [],
                "warmup": [h.get("warmup")], "points": 1}
    grid["schedule"] = chosen["schedule"]
    return grid, chosen


def _protocols(rows: list[dict]) -> list[dict]:
    """The distinct finetuning protocols of the report's runs: grid shape and selection split."""
    seen: dict[str, dict] = {}
    for r in rows:
        g = r["grid"]
        stage = r.get("stage", "finetuning")
        key = json.dumps([stage, r["selected_on"], g["schedule"], [round(x, 4) for x in g["lr_ratio"]] or g["lr"],
                          g["warmup"], g["points"]], default=str)
        entry = seen.setdefault(key, {"stage": stage, "selected_on": r["selected_on"], "schedule": g["schedule"],
                                      "lr_ratio": g["lr_ratio"], "lr": g["lr"], "warmup": g["warmup"],
                                      "points": g["points"], "runs": 0, "at_lowest_rate": 0, "at_highest_rate": 0,
                                      "at_cap": 0, "start_evaluated": 0})
        entry["runs"] += 1
        entry["at_cap"] += int(bool(r.get("at_cap")))
        entry["start_evaluated"] += int(bool(r.get("start_evaluated")))
        lrs, won = [x for x in g["lr"] if x is not None], r["chosen"].get("lr")
        if len(lrs) > 1 and won is not None:  # a winner at an end of the grid: the best rate may lie beyond it
            entry["at_lowest_rate"] += int(math.isclose(won, min(lrs), rel_tol=1e-9))
            entry["at_highest_rate"] += int(math.isclose(won, max(lrs), rel_tol=1e-9))
    return list(seen.values())


def describe_protocol(p: dict) -> str:
    """One line a reader can check the study against: what ran and what was chosen on what."""
    if p["lr_ratio"]:
        rates = "{" + ", ".join(f"{x:.3g}" for x in p["lr_ratio"]) + "} x the parent's rate"
    else:
        rates = "{" + ", ".join(f"{x:.3g}" for x in p["lr"] if x is not None) + "} (absolute)"
    warm = "{" + ", ".join(str(w) for w in p["warmup"]) + "}"
    shape = f"grid of {p['points']}" if p["points"] > 1 else "one configuration"
    where = ("checkpoint and configuration chosen on the domain validation split, test split reported"
             if p["selected_on"] == "val" else
             "checkpoint and configuration chosen on the domain test split and reported on it "
             "(--select-on test: the paper's protocol, an optimistic estimate)")
    edges = [f"{p[k]} of {p['runs']} at its {side} rate" for k, side in (("at_lowest_rate", "lowest"),
                                                                          ("at_highest_rate", "highest")) if p.get(k)]
    edge = f"; the winner is {' and '.join(edges)} (the best rate may lie beyond the grid)" if edges else ""
    start = ("; the starting checkpoint is a candidate (dL >= 0 on the selection split)"
             if p.get("start_evaluated") == p["runs"] else
             f"; the starting checkpoint was a candidate in {p.get('start_evaluated', 0)} of {p['runs']}"
             if p.get("start_evaluated") else "")
    cap = (f"; {p['at_cap']} of {p['runs']} chosen finetunes were still improving when their data ran out (best at "
           "their last evaluation: their losses are upper bounds)" if p.get("at_cap") else "")
    return (f"{p.get('stage', 'finetuning')} ({p['runs']} run(s)): {p['schedule'] or 'constant'} rate after warmup, "
            f"{shape}: lr {rates} x warmup {warm} steps; {where}{edge}{start}{cap}")


def _losses(e) -> dict[str, float | None]:
    """An evaluation as {held-out set: loss} (rows from before `heldout` have only their own sets)."""
    return dict(e.heldout or {})


def is_new_task(run: Run, parent: Run) -> bool:
    """A finetune that is the third stage of a paper-2 chain: it continues a finetuned
    (post-trained) run, or finetunes a pretraining run on another domain than the one
    pretraining was exposed to (lambda = 1: all of D_post in pretraining, no post-training)."""
    return parent.kind != "pretrain" or (parent.domain is not None and run.domain is not None
                                        and parent.domain != run.domain)


def stage_protocol(run: Run, best, stage: str) -> dict:
    """A paper-2 stage's grid, choice and cap, for the protocol lines (_protocols)."""
    grid, chosen = finetune_protocol(run, best)
    return {"stage": stage, "selected_on": run.select_on, "grid": grid, "chosen": chosen,
            "at_cap": still_improving(run, best), "start_evaluated": start_eval(run) is not None}


def early_exposure_rows(runs: list[Run]) -> tuple[list[dict], list[str], list[dict]]:
    """One record per three-stage chain: the finetune (stage 3), its post-trained parent and
    pretrained grandparent, with paper 2's losses at each stage's chosen checkpoint; and the
    post-training and stage-3 runs' protocols."""
    rows, notes, protocols = [], [], []
    for r in runs:
        if r.kind == "pretrain":
            continue
        parent = find_parent(r, runs)
        if parent is None or not is_new_task(r, parent):
            continue
        if parent.kind == "pretrain":  # no post-training stage: the pretrained model is the post-trained one
            post, pre = None, parent
            post_best = parent.eval_at(r.meta.get("parent_checkpoint"), r.pretrain_tokens)
        else:
            post, pre = parent, find_parent(parent, runs)
            post_best = parent.best_eval()
        ft_best = r.best_eval()
        if ft_best is None or post_best is None:
            notes.append(f"{r.path}: no chosen checkpoint in it or the model it started from; left out of paper 2's "
                         "losses")
            continue
        general = r.general or parent.general or (pre.general if pre else None)
        post_test, ft_test = f"{parent.domain}-test", f"{r.domain}-test"
        losses = stage_losses(_losses(post_best) | {post_test: post_best.domain_test_loss}, _losses(ft_best) | {
            ft_test: ft_best.domain_test_loss, **({f"{general}-val": ft_best.general_val_loss} if general else {})},
            post_test, ft_test, f"{general}-val" if general else None)
        if losses.L_ret is None:
            notes.append(f"{r.path}: not scored on {post_test} (evaluated before mixer scored every test set of the "
                         "chain); delete its evals.jsonl and run mixer eval again")
        started = Path(r.meta.get("parent_checkpoint") or "").name
        winner = post_best.checkpoint
        if post is not None and winner == "start":  # post-training never beat its start: it hands that on
            winner = Path(_owner(post, post_best).meta.get("parent_checkpoint") or "").name
        if post is not None and started and started != winner:
            notes.append(f"{r.path}: finetuned from {started}, not the post-training winner {post_best.checkpoint}; "
                         "L_im describes another model than the one finetuned")
        stage = (pre.meta.get("stage") if pre else None) or {}
        lam = (stage.get("vars") or {}).get("lam")
        epochs = pre.meta.get("domain_epochs") if pre else None
        label = (f"lambda {float(lam):g}" if lam is not None else
                 f"{epochs:.3g} early epochs" if epochs is not None else setup_of(pre) if pre else "?")
        if post is not None:
            root = next((q for q in runs if q is post or any(x is post for x in q.subruns)), post)
            protocols.append(stage_protocol(root, root.best_eval(), "post-training"))
        protocols.append(stage_protocol(r, ft_best, "stage 3 (new task)"))
        rows.append({"model": r.model, "post_domain": parent.domain, "ft_domain": r.domain, "setup": label,
                     "lam": None if lam is None else float(lam), "pretrain_domain_epochs": epochs,
                     "seed": pre.seed if pre else parent.seed, **losses.to_dict(),
                     "post_checkpoint": post_best.checkpoint, "ft_checkpoint": ft_best.checkpoint,
                     "runs": {"pretrain": str(pre.path) if pre else None,
                              "posttrain": str(post.path) if post else None, "finetune": str(r.path)}})
    return rows, notes, protocols


def _early_exposure_table(rows: list[dict]) -> list[dict]:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        groups[(row["model"], row["post_domain"], row["ft_domain"], row["setup"])].append(row)
    out = []
    for (model, post, ft, setup), g in sorted(groups.items(), key=lambda kv: (kv[0][:3], kv[1][0]["lam"] or 0,
                                                                            kv[0][3])):
        out.append({"model": model, "post_domain": post, "ft_domain": ft, "setup": setup, "lam": g[0]["lam"],
                    "seeds": sorted(r["seed"] for r in g),
                    **{k: _spread([r[k] for r in g]) for k in ("L_im", "L_ft", "L_ret", "L_pre", "retention_loss")}})
    return out


def build_report(runs: list[Run]) -> dict:
    """Everything the report shows, as plain data (JSON-ready)."""
    rows, notes = finetune_rows(runs)
    chains, chain_notes, chain_protocols = early_exposure_rows(runs)
    notes += chain_notes
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
                 "forgetting": _spread([r["forgetting"] for r in g]), "relative_gain_pct": None,
                 "at_cap": sum(bool(r["at_cap"]) for r in g),
                 "forgetting_by_ratio": {k: _spread([r["forgetting_by_ratio"].get(k) for r in g])
                                         for k in sorted({k for r in g for k in r["forgetting_by_ratio"]}, key=float)}}
        if base and setup != "NPT":
            by_seed = {r["seed"]: r["post_ft_loss"] for r in base}
            base_mean = mean_spread(list(by_seed.values())).mean
            entry["relative_gain_pct"] = mean_spread(
                [relative_gain(by_seed.get(r["seed"], base_mean), r["post_ft_loss"]) for r in g]).to_dict()
        table.append(entry)
    return {"format": REPORT_FORMAT, "mixer_version": __version__, "runs": [str(r.path) for r in runs],
            "table": table, "compute_multiplier": _multipliers(table, rows), "gap_closed": _gaps(table, rows),
            "finetuning": _protocols(rows + chain_protocols), "pretrain": _pretrain_summary(runs), "finetune_runs": rows,
            "early_exposure": _early_exposure_table(chains), "early_exposure_runs": chains, "notes": notes}


def _order(key: tuple, row: dict) -> tuple:
    """Model, domain, finetuning, tokens; then NPT, SPT by fraction, SCPT."""
    model, domain, setup, ft, tokens = key
    rank = 0 if setup == "NPT" else 1 if setup.startswith("SPT") else 2
    return (str(model), str(domain), ft, tokens, rank, row["fraction"], setup)


def _spread(values: list) -> dict | None:
    have = [v for v in values if v is not None]
    return mean_spread(have).to_dict() if have else None


def _multipliers(table: list[dict], rows: list[dict]) -> list[dict]:
    """T_NPT / T_SPT over the SPT post-FT loss curve (finetunes from several pretraining
    checkpoints; with one, only a bound is known), against every NPT budget that was finetuned
    (`references`, the largest first in the top-level fields): once on the seed means, once per
    seed that has both curves. Each reference says whether NPT's curve had saturated there (its
    last doubling of tokens improved it less than its seeds disagree) and which finetunes the
    crossing rests on were still improving at their cap."""
    out = []
    cells = defaultdict(list)
    for e in table:
        cells[(e["model"], e["domain"], e["setup"], e["finetune"])].append(e)
    for (model, domain, setup, ft), es in cells.items():
        base = cells.get((model, domain, "NPT", ft))
        if setup == "NPT" or not base:
            continue
        es = sorted(es, key=lambda e: e["pretrain_tokens"])
        base = sorted(base, key=lambda e: e["pretrain_tokens"])
        cell = lambda r, s=setup: (r["model"], r["domain"], r["setup"], r["finetune"]) == (model, domain, s, ft)  # noqa: E731
        refs = [_reference(base[: i + 1], es, [r for r in rows if cell(r)], [r for r in rows if cell(r, "NPT")])
                for i in range(len(base))]
        top = refs[-1]
        out.append({"model": model, "domain": domain, "setup": setup, "finetune": ft,
                    **{k: top[k] for k in ("value", "bound", "text", "npt_tokens", "per_seed", "over_seeds",
                                           "bounds_over_seeds", "saturation", "note")},
                    "spt_points": len(es), "references": refs[::-1]})
    return out


def _reference(npt_curve: list[dict], spt: list[dict], spt_rows: list[dict], npt_rows: list[dict]) -> dict:
    """The multiplier against NPT's post-FT loss at the last budget of `npt_curve`."""
    ref = npt_curve[-1]
    T = ref["pretrain_tokens"]
    t_spt, how, rests_on = crossing([e["pretrain_tokens"] for e in spt], [e["post_ft_loss"]["mean"] for e in spt],
                                    ref["post_ft_loss"]["mean"])
    m = compute_multiplier(T, ref["post_ft_loss"]["mean"], [e["pretrain_tokens"] for e in spt],
                           [e["post_ft_loss"]["mean"] for e in spt])
    per_seed = []
    for seed in sorted(set(ref["seeds"]) & {s for e in spt for s in e["seeds"]}):
        mine = sorted((r["pretrain_tokens"], r["post_ft_loss"]) for r in spt_rows if r["seed"] == seed)
        target = [r["post_ft_loss"] for r in npt_rows if r["seed"] == seed and r["pretrain_tokens"] == T]
        if mine and target:
            t, losses = zip(*mine)
            ms = compute_multiplier(T, target[0], t, losses)
            capped = _capped(spt_rows, crossing(t, losses, target[0])[2], seed) + _capped(npt_rows, (T,), seed)
            per_seed.append({"seed": seed, "value": ms.value, "bound": ms.bound, "spt_points": len(t),
                             "at_cap": capped})
    sat = saturation([e["pretrain_tokens"] for e in npt_curve], [e["post_ft_loss"]["mean"] for e in npt_curve],
                     ref["post_ft_loss"]["std"])
    capped_spt, capped_npt = _capped(spt_rows, rests_on), _capped(npt_rows, (T,))
    return {"npt_tokens": T, "npt_loss": ref["post_ft_loss"], "value": m.value, "bound": m.bound, "text": str(m),
            "per_seed": per_seed, "over_seeds": _spread([x["value"] for x in per_seed]),
            "bounds_over_seeds": sorted({x["bound"] for x in per_seed}), "saturation": sat,
            "crossing_rests_on": list(rests_on), "spt_at_cap": capped_spt, "npt_at_cap": capped_npt,
            "note": _multiplier_note(m, T, sat, capped_spt, capped_npt)}


def _capped(rows: list[dict], tokens: tuple, seed: int | None = None) -> list[float]:
    """The token counts among `tokens` where a finetune (of `seed`, or any seed) was still
    improving when its data ran out."""
    return sorted({float(r["pretrain_tokens"]) for r in rows if r.get("at_cap") and r["pretrain_tokens"] in tokens
                   and (seed is None or r["seed"] == seed)})


def _multiplier_note(m, T: float, sat: dict | None, spt_cap: list[float], npt_cap: list[float]) -> str:
    """What the number means, in words, when the reference or the crossing is not solid."""
    parts = []
    if sat and sat["saturated"]:
        parts.append(f"NPT's post-finetuning loss improved {sat['gain_per_doubling']:+.3g} nats per doubling from "
                     f"{format_count(sat['from_tokens'])} to {format_count(T)} tokens, less than its seed spread "
                     f"({sat['spread']:.2g}): the reference has saturated, so {m} says how much sooner SPT reaches "
                     "NPT's plateau, not how many tokens SPT saves at a budget where NPT still improves")
    elif sat and sat["saturated"] is None:
        parts.append("one seed: whether NPT had saturated at this budget is unknown")
    if spt_cap:
        parts.append("the crossing rests on SPT finetunes still improving at their cap (at "
                     f"{', '.join(format_count(t) for t in spt_cap)} tokens): their losses are upper bounds, so SPT "
                     "may cross earlier")
    if npt_cap:
        parts.append("NPT's reference finetune was still improving at its cap: its loss is an upper bound")
    return "; ".join(parts)


def _gaps(table: list[dict], rows: list[dict]) -> list[dict]:
    """Gap closed by each small-model SPT row towards every larger NPT model (same domain,
    finetuning and tokens). Larger means more parameters (run.json model_params). Per seed:
    the small model's SPT and NPT runs of one seed against the larger model's mean."""
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
            large = big["post_ft_loss"]["mean"]
            cell = (small["model"], domain, ft, tokens)
            by_seed = {(r["setup"], r["seed"]): r["post_ft_loss"] for r in rows
                       if (r["model"], r["domain"], r["finetune"], r["pretrain_tokens"]) == cell}
            per_seed = [{"seed": s, "gap_closed_pct": gap_closed(by_seed[("NPT", s)], by_seed[(small["setup"], s)], large)}
                        for s in small["seeds"] if ("NPT", s) in by_seed and (small["setup"], s) in by_seed
                        and by_seed[("NPT", s)] != large]
            out.append({"small": small["model"], "large": model, "domain": domain, "setup": small["setup"],
                        "finetune": ft, "pretrain_tokens": tokens,
                        "gap_closed_pct": gap_closed(mine["post_ft_loss"]["mean"], small["post_ft_loss"]["mean"], large),
                        "per_seed": per_seed, "over_seeds": _spread([x["gap_closed_pct"] for x in per_seed])})
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


def format_table(report: dict) -> str:
    """The main comparison as a fixed-width table (also the body of report.md)."""
    rows = []
    for e in report["table"]:
        rg = e["relative_gain_pct"]
        rows.append([e["model"], e["domain"] or "-", e["setup"], e["finetune"], format_count(e["pretrain_tokens"]),
                     len(e["seeds"]), _fmt(e["post_ft_loss"]), _fmt(rg, "%"), _fmt(e["forgetting"])])
    return table(rows, ["model", "domain", "pretraining", "finetune", "tokens", "seeds", "post-FT loss",
                        "rel. gain", "forgetting"])


def format_matched_forgetting(report: dict) -> list[str]:
    """Forgetting with every setup at the same learning-rate ratio (each grid point's own
    early-stopping choice), at each model/domain/finetuning's largest budget: the grid winners
    differ in rate, and forgetting grows with it."""
    lines = []
    groups = defaultdict(list)
    for e in report["table"]:
        groups[(e["model"], e["domain"], e["finetune"])].append(e)
    for (model, domain, ft), es in sorted(groups.items(), key=lambda kv: str(kv[0])):
        top = max(e["pretrain_tokens"] for e in es)
        es = [e for e in es if e["pretrain_tokens"] == top and e.get("forgetting_by_ratio")]
        ratios = sorted({k for e in es for k in e["forgetting_by_ratio"]}, key=float)
        for k in ratios if len(es) > 1 else []:
            have = [e for e in es if e["forgetting_by_ratio"].get(k)]
            lines.append(f"forgetting at lr_ratio {k} for every setup ({model}/{domain}, {ft}, "
                         f"{format_count(top)} tokens): " + ", ".join(
                             f"{e['setup']} {_fmt(e['forgetting_by_ratio'][k])}" for e in have))
    return lines


def format_early_exposure(report: dict) -> str:
    """Paper 2's table: one row per (model, D_post -> D_ft, early exposure), mean ± std over seeds."""
    rows = [[e["model"], f"{e['post_domain']} -> {e['ft_domain']}", e["setup"], len(e["seeds"]),
             *(_fmt(e[k]) for k in ("L_im", "L_ft", "L_ret", "L_pre", "retention_loss"))]
            for e in report.get("early_exposure", [])]
    return table(rows, ["model", "post -> ft", "early exposure", "seeds", "L_im", "L_ft", "L_ret", "L_pre",
                        "L_ret - L_im"])


def format_report(report: dict) -> str:
    parts = [format_table(report)] if report["table"] else [] if report.get("early_exposure") else [
        "no finetune runs with a known parent: nothing to compare"]
    if report.get("early_exposure"):
        parts.append(format_early_exposure(report))
    parts += [describe_protocol(p) for p in report.get("finetuning", [])]
    parts += format_matched_forgetting(report)
    for m in report["compute_multiplier"]:
        for i, ref in enumerate(m.get("references") or [m]):
            seeds = ""
            if len(ref.get("per_seed") or []) > 1:
                loose = [b for b in ref["bounds_over_seeds"] if b != "="]
                seeds = (f"; per seed {_fmt(ref['over_seeds'])}x over {len(ref['per_seed'])} seeds"
                         + (f" (some only bounds: {', '.join(loose)})" if loose else ""))
            head = (f"compute multiplier {m['model']}/{m['domain']} {m['setup']} ({m['finetune']})" if i == 0 else
                    "  and")
            parts.append(f"{head}: {ref['text']} vs NPT at {format_count(ref['npt_tokens'])} tokens "
                         f"({m['spt_points']} SPT checkpoint(s)){seeds}" + (f" [{ref['note']}]" if ref.get("note") else ""))
    for g in report["gap_closed"]:
        seeds = (f"; per seed {_fmt(g['over_seeds'])}% over {len(g['per_seed'])} seeds"
                 if len(g.get("per_seed") or []) > 1 else "")
        parts.append(f"gap closed {g['small']} {g['setup']} vs {g['large']} NPT ({g['domain']}, "
                     f"{format_count(g['pretrain_tokens'])} tokens): {g['gap_closed_pct']:.1f}%{seeds}")
    parts += [f"note: {n}" for n in report["notes"]]
    return "\n".join(parts)


def write_report(report: dict, runs: list[Run], out: Path) -> list[Path]:
    """report.md, report.json and the plots into `out`; returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    plots = [p for p in (plot_domain_curves(runs, out / "domain_loss_vs_tokens.png"),
                         plot_post_ft(report, out / "post_ft_vs_fraction.png"),
                         plot_post_ft_vs_tokens(report, out / "post_ft_vs_tokens.png"),
                         plot_frontier(report, out / "frontier.png"),
                         plot_stage_frontier(report, out / "frontier_ret_ft.png", "L_ft", "L_ret"),
                         plot_stage_frontier(report, out / "frontier_pre_ret.png", "L_pre", "L_ret")) if p]
    report = report | {"plots": [p.name for p in plots]}
    write_report_json(out, report)
    md = ["# mixer report", "", f"{len(report['runs'])} runs; post-FT loss is the domain test loss of the "
          "finetuned checkpoint chosen as the finetuning lines below say; relative gain = 100 (L_NPT - L) / L_NPT; "
          "forgetting = rise of general val loss from the pretrained checkpoint to the chosen finetuned one; "
          "mean ± std over seeds (relative gain paired with the NPT run of the same seed where there is one, else "
          "with the NPT mean).",
          "", "```", format_report(report), "```", ""] + [f"![{p.stem}]({p.name})" for p in plots]
    with atomic_open(out / "report.md", "w") as f:
        f.write("\n".join(md) + "\n")
    return [out / "report.md", out / "report.json"] + plots


def _fmt(s: dict | None, unit: str = "") -> str:
    if s is None:
        return "-"
    return f"{s['mean']:.4g}{unit}" if s["std"] is None else f"{s['mean']:.4g}{unit} ± {s['std']:.2g}"

