"""`make study`: the papers' headline results, measured at laptop scale (examples/study.py --size study).

What it measures (docs/results/study/, the README's results table):

0. Data: the general source is Python/Perl documentation plus a 5% slice of the music and
   proofs corpora's documents, carved out before tokenizing (examples/carve.py: whole
   near-duplicate groups, so no carved document nor a near copy of one is in any domain split),
   as web data holds a little of every domain; NPT then learns something of the domain.
1. Scaling law: pretraining runs at domain fractions 0, 2, 5, 10, 15 and 20% (4 to 42 epochs
   of a 20K-token domain subset in 4.2M tokens, 12 evaluated checkpoints each, 3 seeds);
   `mixer fit --holdout 0.2` fits the joint law on the five fractions 0-15% and predicts the
   20% curve, beside the naive baselines, with the onset of overfitting observed and
   predicted. 15% rather than 1%: in the pilot (seed 0) the law fitted on 0-10% missed the
   20% curve by 15% (its gap kernel, fixed by the near-zero gaps at 1-2%, peaks at 11%), and
   on 0, 2, 5, 10 and 15% it predicted it within 2.2%, beating both naive baselines (2.5%).
   The same sweep on proofs (a 50K-token subset, seed 0, pretraining only) fits a second law.
2. Relative gain and forgetting: every fraction's last checkpoint finetuned at every seed over
   the learning-rate grid, early-stopped by patience on the domain validation split (its start
   a candidate), the test split reported.
3. Compute multiplier: NPT finetuned from 1/8, 1/2 and all of its run (the references), the
   best SPT fraction from 1/16 .. 1 of its run at every seed;
   `mixer report` interpolates the crossings in log tokens against each reference. A pilot
   comes first: if NPT's post-finetuning loss does not fall with pretraining tokens, no
   multiplier is defined and the study stops there.
4. Seeds: 0, 1, 2 for every fraction, each a full reseed: the data order of every mix
   (`mixer build --seed`) and the model's initialisation and trainer (`mixer train --seed`);
   the domain subset is the same. Every headline number is a mean ± std over them.
5. Gap closed: NPT of the next larger preset (`small`, ~6x the parameters) over the first half
   of the run, on the same cosine, finetuned the same way, against the tiny model's SPT and NPT
   at the same tokens (seed 0 for the larger model).
6. Paper 2: a compute-matched pipeline (music as D_post, proofs as D_ft) at lambda 0, 0.25,
   0.5, 0.75 and 1, 3 seeds (shipped recipe early-exposure, subset vars set here): L_ret, L_ft,
   L_pre and both frontiers, each stage's rate grid wide enough that no winner sits at an edge.

The best SPT fraction is chosen on the domain validation split of the
seed-0 finetunes; every reported loss is on the test split.
"""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter, defaultdict
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from mixer.formats.run import load_run

CHECKPOINTS = 12  # evenly spaced, every one evaluated: the law's curves (its known-answer tests use 12)
NPT_AT = (1 / 8, 1 / 2, 1.0)  # shares of the run finetuned for NPT: the multiplier's references (1/2: gap closed)
SPT_AT = (1 / 16, 1 / 8, 1 / 4, 1 / 2, 1.0)  # for the best SPT fraction: where SPT crosses NPT's references
PARTS = ("all", "law", "paper2")  # what `--parts` may run (Headline.wants)


@dataclass(frozen=True)
class Design:
    domain: str = "music"
    holdout: float = 0.2
    large: str = "small"  # the larger model of the gap-closed comparison
    lams: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)  # at every seed of the study (--seeds)
    ee_tokens: str = "1048576"  # paper 2's pretraining budget (a quarter of paper 1's: 15 chains)
    post_subset: str = "100K"  # D_post for paper 2 (music)
    ft_domain: str = "proofs"  # D_ft for paper 2
    ft_subset: str = "100K"  # proofs documents are ~7K tokens: ~15 of them (the first study's 50K was ~7)
    ft_epochs: int = 12  # a cap; stage 3 stops by patience on D_ft's validation split
    # Each stage's rates (x the pretraining rate it continues): post-training is one pass, whose
    # winners sat at the top of 0.25-2x in the first study; stage 3 must learn D_ft without
    # wiping out D_post (the first study's 0.25-2x cost 2.5-3.8 nats of music; 3 of 5 winners at
    # 0.25x). Pilot (seed 0, 1M tokens, 5 lambdas): post-training chose 2x of {1, 2, 4} (music val
    # 2.66-3.20) at a cost to the general loss (3.7 -> 5.6-6.3 nats: the tiny model cannot hold
    # both); stage 3 chose the top of {0.0625, 0.125, 0.25}, still improving at 8 epochs;
    # L_ret 4.71-5.16 (best at lambda 0.25), L_pre 5.41-6.11 against 6.93 for a uniform guess.
    post_grid: str = "1,2,4"
    stage3_grid: str = "0.125,0.25,0.5"
    # The second law sweep (pretraining only, seed 0) on proofs.
    law_domain: str = "proofs"
    law_subset: str = "50K"


class Headline:
    def __init__(self, study, jobs: int, design: Design = Design(), parts: set[str] | None = None) -> None:
        self.s, self.d = study, design
        self.parts = parts or {"all"}
        self.runs = study.out / "runs"
        self.pool = ThreadPoolExecutor(max_workers=jobs)
        self.futures: list = []

    def wants(self, part: str) -> bool:
        return "all" in self.parts or part in self.parts

    # -- building blocks ------------------------------------------------------------------

    @staticmethod
    def eval_at(run: Path, share: float):
        """The evaluation of the run's checkpoint nearest to `share` of its tokens."""
        evals = load_run(run).evals
        top = max(e.tokens for e in evals)
        return min(evals, key=lambda e: (abs(e.tokens - share * top), e.checkpoint != "final"))

    def ft_runs(self, pre: Path, shares: tuple[float, ...], ft_mix: Path, seed: int) -> list[Path]:
        out = []
        for share in shares:
            ckpt = self.eval_at(pre, share).checkpoint
            out.append(self.s.finetune(ft_mix, pre, pre.parent / f"{pre.name}-ft-{ckpt}", "finetune",
                                       "--checkpoint", ckpt, seed=seed))
        return out

    def mixes(self, seed: int, fractions: tuple[float, ...]) -> dict[str, Path]:
        sz = self.s.size
        common = ("--domain", self.d.domain, "--seed", str(seed), "--tokens", sz.tokens)
        out = {"npt": self.s.mix(f"s{seed}/npt", *common, "--fraction", "0")}
        for f in fractions:
            out[f"spt{f:g}"] = self.s.mix(f"s{seed}/spt{f:g}", *common, "--fraction", str(f))
        out["ft"] = self.s.mix(f"s{seed}/ft", "--domain", self.d.domain, "--seed", str(seed),
                               "--epochs", str(sz.ft_epochs))
        return out

    def submit(self, *chains: Callable[[], object]) -> list:
        fs = [self.pool.submit(c) for c in chains]
        self.futures += fs
        return fs

    def wait(self, fs: list) -> None:
        wait(fs, return_when=FIRST_EXCEPTION)
        for f in fs:
            if f.done() and f.exception() is not None:
                self.s.stop()
                raise f.exception()
        wait(fs)
        for f in fs:
            f.result()

    # -- chains ---------------------------------------------------------------------------

    def npt_chain(self, seed: int, mix: Path, ft: Path, pilot: bool) -> None:
        pre = self.s.pretrain(mix, self.runs / f"s{seed}" / "npt", checkpoints=CHECKPOINTS, seed=seed)
        fts = self.ft_runs(pre, NPT_AT, ft, seed)
        if pilot:
            self.pilot(fts)

    def pilot(self, fts: list[Path]) -> None:
        """No multiplier is defined unless NPT gets better after finetuning with more pretraining."""
        pts = []
        for r in fts:
            run = load_run(r)
            pts.append((run.pretrain_tokens, run.best_eval().domain_test_loss))
        pts.sort()
        line = ", ".join(f"{t / 1e6:.2f}M: {loss:.4f}" for t, loss in pts)
        print(f"         pilot: NPT post-FT test loss by pretraining tokens: {line}", flush=True)
        if not pts[-1][1] < pts[0][1]:
            self.s.stop()
            raise SystemExit("study: pilot failed: NPT's post-finetuning loss does not fall with pretraining tokens, "
                             "so no compute multiplier is defined in this design; change it (more tokens per run, "
                             "a larger domain subset) and run again")

    def spt_pretrain(self, seed: int, f: float, mix: Path) -> Path:
        return self.s.pretrain(mix, self.runs / f"s{seed}" / f"spt{f:g}", checkpoints=CHECKPOINTS, seed=seed)

    def spt_chain(self, seed: int, f: float, mix: Path, ft: Path, shares: tuple[float, ...]) -> None:
        self.ft_runs(self.spt_pretrain(seed, f, mix), shares, ft, seed)

    def large_chain(self, mix: Path, ft: Path, npt: Path) -> None:
        """The larger model's NPT over the first half of the run, on the same cosine (the same
        horizon in tokens), to exactly the tokens of the tiny NPT run's checkpoint nearest half
        its run (`npt`; 12 checkpoints put none at the half), so the report compares the two
        finetuned at one budget."""
        from mixer.units import parse_count

        half = self.eval_at(npt, 0.5).tokens
        pre = self.s.pretrain(mix, self.runs / "s0" / f"{self.d.large}-npt", "--tokens", str(half),
                              "--schedule-tokens", str(10 * parse_count(self.s.size.tokens)), model=self.d.large,
                              checkpoints=4)
        self.s.finetune(ft, pre, self.runs / "s0" / f"{self.d.large}-npt-ft-final")

    def early_exposure_chain(self, lam: float, seed: int) -> None:
        sz, d = self.s.size, self.d
        mixes = self.s.out / "mixes" / "ee" / f"s{seed}" / f"lam{lam:g}"
        # Built on every run: a finished recipe build is a no-op, an interrupted one resumes.
        self.s.run("build", "--recipe", "early-exposure", "--stores", str(self.s.stores), "--out", str(mixes),
                   "--set", f"lam={lam:g}", "--set", f"domain={d.domain}", "--set", f"ft_domain={d.ft_domain}",
                   "--set", f"tokens={d.ee_tokens}", "--set", f"seq_len={sz.seq_len}", "--set", f"seed={seed}",
                   "--set", f"ft_epochs={d.ft_epochs}", "--set", f"post_subset={d.post_subset}",
                   "--set", f"ft_subset={d.ft_subset}", "--quiet")
        runs = self.runs / "ee" / f"s{seed}" / f"lam{lam:g}"
        pre = self.s.pretrain(mixes / "pretrain", runs / "pretrain", checkpoints=4, seed=seed)
        start = pre
        if (mixes / "posttrain" / "manifest.json").exists():  # lambda = 1 leaves nothing to post-train
            start = self.s.finetune(mixes / "posttrain", pre, runs / "posttrain", seed=seed,
                                    grid=("--lr-ratio", d.post_grid))
        self.s.finetune(mixes / "finetune", start, runs / "finetune", seed=seed, grid=("--lr-ratio", d.stage3_grid))

    def law_chain(self, f: float) -> None:
        sz, d = self.s.size, self.d
        name = "npt" if f == 0 else f"spt{f:g}"
        mix = self.s.mix(f"law-{d.law_domain}/{name}", "--domain", d.law_domain, "--seed", str(sz.seeds[0]),
                         "--tokens", sz.tokens, "--fraction", str(f), "--domain-subset", d.law_subset)
        self.s.pretrain(mix, self.runs / f"law-{d.law_domain}" / name, checkpoints=CHECKPOINTS)

    # -- the study ------------------------------------------------------------------------

    def best_fractions(self, fractions: tuple[float, ...]) -> list[float]:
        """SPT fractions by seed 0's post-FT loss on the domain validation split, best first
        (the best is finetuned along its run for the compute multiplier)."""
        seed = self.s.size.seeds[0]
        val = {f: load_run(self.runs / f"s{seed}" / f"spt{f:g}-ft-final").best_eval().domain_val_loss
               for f in fractions}
        ranked = sorted(fractions, key=val.get)
        print(f"         SPT fractions by post-FT validation loss (seed {seed}): "
              + ", ".join(f"{f:g} ({val[f]:.4f})" for f in ranked), flush=True)
        return ranked

    def run(self) -> None:
        try:
            if self.wants("law") and not self.wants("all"):
                self.run_law()
            if self.wants("paper2") and not self.wants("all"):
                self.wait(self.submit(*self.paper2_chains()))
            if self.wants("all"):
                self.run_all()
        finally:
            self.pool.shutdown(wait=True, cancel_futures=True)

    def paper2_chains(self) -> list[Callable[[], None]]:
        return [(lambda lam=lam, s=s: self.early_exposure_chain(lam, s)) for s in self.s.size.seeds for lam in self.d.lams]

    def run_law(self) -> None:
        """The law rows alone: the music sweep's pretraining at every seed (first seed first) and
        the proofs sweep, then both fits; nothing finetuned. The same runs as the whole study's."""
        sz = self.s.size
        m = {s: self.mixes(s, sz.fractions) for s in sz.seeds}
        self.s.audit(m[sz.seeds[0]]["npt"])
        self.wait(self.submit(*[c for s in sz.seeds for c in (
            lambda s=s: self.s.pretrain(m[s]["npt"], self.runs / f"s{s}" / "npt", checkpoints=CHECKPOINTS, seed=s),
            *[(lambda s=s, f=f: self.spt_pretrain(s, f, m[s][f"spt{f:g}"])) for f in sz.fractions])],
            *[(lambda f=f: self.law_chain(f)) for f in (0.0, *sz.fractions)]))

    def run_all(self) -> None:
        sz = self.s.size
        seeds = sz.seeds
        m = {s: self.mixes(s, sz.fractions) for s in seeds}
        self.s.audit(m[seeds[0]]["npt"])  # the general data's domain slices against the domain held-out splits
        self.s.audit(m[seeds[0]][f"spt{sz.fractions[-1]:g}"])
        first = self.submit(
            lambda: self.npt_chain(seeds[0], m[seeds[0]]["npt"], m[seeds[0]]["ft"], pilot=True),
            *[(lambda f=f: self.spt_chain(seeds[0], f, m[seeds[0]][f"spt{f:g}"], m[seeds[0]]["ft"], (1.0,)))
              for f in sz.fractions])
        self.submit(*[(lambda s=s: self.npt_chain(s, m[s]["npt"], m[s]["ft"], pilot=False)) for s in seeds[1:]],
                    *self.paper2_chains(),
                    *[(lambda f=f: self.law_chain(f)) for f in (0.0, *sz.fractions)])
        self.wait(first)
        best = self.best_fractions(sz.fractions)[0]
        extra = tuple(x for x in SPT_AT if x != 1.0)
        later = [lambda: self.ft_runs(self.runs / f"s{seeds[0]}" / f"spt{best:g}", extra, m[seeds[0]]["ft"], seeds[0]),
                 lambda: self.large_chain(m[seeds[0]]["npt"], m[seeds[0]]["ft"], self.runs / f"s{seeds[0]}" / "npt")]
        for s in seeds[1:]:
            later += [lambda s=s, f=f: self.spt_chain(s, f, m[s][f"spt{f:g}"], m[s]["ft"],
                                                      SPT_AT if f == best else (1.0,)) for f in sz.fractions]
        self.submit(*later)
        self.wait(self.futures)

    def answers(self, publish: Path | None) -> None:
        s, d = self.s, self.d
        law = sorted(r for r in (self.runs / f"law-{d.law_domain}").glob("*") if (r / "run.json").exists())
        if self.wants("law") or self.wants("all"):
            tiny = [r for r in self.runs.glob("s*/*") if (r / "run.json").exists() and not r.name.startswith(d.large)]
            s.run("fit", *map(str, sorted(tiny)), "--model", s.size.model, "--domain", d.domain, "--holdout",
                  str(d.holdout), "--out", str(s.out / "fit"), show=True)
            s.run("fit", *map(str, law), "--model", s.size.model, "--domain", d.law_domain, "--holdout",
                  str(d.holdout), "--out", str(s.out / f"fit-{d.law_domain}"), show=True)
        if self.wants("all"):
            paper1 = [r for r in self.runs.glob("s*/*") if (r / "run.json").exists()]
            s.run("report", *map(str, sorted(paper1)), "--out", str(s.out / "report"), show=True)
        if self.wants("paper2"):
            ee = [r for r in (self.runs / "ee").glob("s*/*/*") if (r / "run.json").exists()]
            s.run("report", *map(str, sorted(ee)), "--out", str(s.out / "early-exposure"), show=True)
        if publish:
            print(publish_results(s.out, publish))


# -- publishing and the README's table ------------------------------------------------------


OUTPUTS = ("report", "fit", "early-exposure", "fit-*")  # beside runs/, what a publication holds


def publish_results(out: Path, dest: Path) -> str:
    """The reports, the fits and every run's run.json and evals.jsonl (grid points included)
    under `dest`, so every number can be recomputed without the checkpoints; the README's
    table (`table`) in dest/headline.md, and returned."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    from mixer.formats.atomic import read_json, write_json
    from mixer.formats.run import read_run_meta, relocate, write_run_meta

    for name in ("run.json", "evals.jsonl"):
        for f in sorted((out / "runs").rglob(name)):
            target = dest / "runs" / f.relative_to(out / "runs")
            target.parent.mkdir(parents=True, exist_ok=True)
            if name == "run.json":  # paths relative to the run: the copy never points back here
                write_run_meta(target.parent, relocate(read_run_meta(f.parent), f.parent.resolve()))
            else:
                shutil.copyfile(f, target)
    for sub in sorted({d.name for pattern in OUTPUTS for d in out.glob(pattern) if d.is_dir()}):
        for f in sorted((out / sub).glob("*")):
            if f.suffix in (".md", ".json", ".png"):
                (dest / sub).mkdir(exist_ok=True)
                if f.suffix == ".json":  # the runs a report names, as paths relative to the copy
                    write_json(dest / sub / f.name, relative_paths(read_json(f), out.resolve(), (out / sub).resolve()))
                else:
                    shutil.copyfile(f, dest / sub / f.name)
    md, _ = table(dest)
    (dest / "headline.md").write_text(md + "\n")
    return md


def relative_paths(data, root: Path, base: Path):
    """`data` (parsed JSON) with every string naming a path under `root` made relative to `base`."""
    if isinstance(data, dict):
        return {k: relative_paths(v, root, base) for k, v in data.items()}
    if isinstance(data, list):
        return [relative_paths(v, root, base) for v in data]
    if isinstance(data, str) and data.startswith(f"{root}{os.sep}"):
        return os.path.relpath(data, base)
    return data


def _pm(x: dict | None, unit: str = "", digits: int = 3) -> str:
    if not x:
        return "-"
    if x.get("std") is None:
        return f"{x['mean']:.{digits}g}{unit} (1 seed)"
    return f"{x['mean']:.{digits}g}{unit} ± {x['std']:.2g} ({x['n']} seeds)"


def refit(results: Path, domain: str, holdout: float | None = None) -> dict:
    """The law of `domain` fitted from the published runs by `mixer fit`'s own code (seeds
    pooled; the larger model's runs left out), held-out fraction as published (else Design's)."""
    from mixer.analysis.fit import build_fit, fit_inputs
    from mixer.formats.run import load_runs

    runs_dir, d = results / "runs", Design()
    pattern = f"law-{domain}/*/run.json" if (runs_dir / f"law-{domain}").is_dir() else "s*/*/run.json"
    runs = sorted(r.parent for r in runs_dir.glob(pattern) if not r.parent.name.startswith(d.large))
    published = results / ("fit" if pattern.startswith("s*") else f"fit-{domain}") / "fit.json"
    if holdout is None:
        holdout = json.loads(published.read_text()).get("holdout_fraction") if published.is_file() else d.holdout
    return build_fit(fit_inputs(load_runs(runs), "tiny", domain), holdout=holdout)


def table(results: Path) -> tuple[str, dict]:
    """The README's results table, recomputed from the published run files: the report and
    the fits through the code of `mixer report` and `mixer fit`."""
    from mixer.analysis.report import build_report
    from mixer.formats.run import load_runs
    from mixer.units import format_count

    runs_dir = results / "runs"
    paper1 = sorted(r.parent for r in runs_dir.glob("s*/*/run.json"))
    rep = build_report(load_runs(paper1))
    fits = refit_all(results)
    ee_rep = _paper2_report(results)
    tiny = [e for e in rep["table"] if e["model"] == "tiny" and e["finetune"] == "FT"]
    top = max(e["pretrain_tokens"] for e in tiny)
    at_top = [e for e in tiny if e["pretrain_tokens"] == top]
    final = [e for e in at_top if e["setup"] != "NPT"]
    best = max(final, key=lambda e: (e["relative_gain_pct"]["n"], e["relative_gain_pct"]["mean"]))
    mult = sorted((m for m in rep["compute_multiplier"] if m["model"] == "tiny" and m["finetune"] == "FT"
                   and m["spt_points"] > 1), key=lambda m: -len(m["per_seed"]))
    gaps = [g for g in rep["gap_closed"] if g["setup"] == best["setup"]]
    rows = [
        ("relative gain after FT, best SPT vs NPT (positive = SPT better)", "+2.0% (music, 1B, 200B tokens)",
         f"{_pm(best['relative_gain_pct'], '%')} ({best['setup']}, {format_count(top)} tokens)"),
        *[_multiplier_row(m) for m in mult],
        *[(f"gap closed, tiny {g['setup']} vs {g['large']} NPT at {format_count(g['pretrain_tokens'])} tokens",
           "81% (music, 1B SPT vs 3B NPT)", f"{_pm(g['over_seeds'], '%')}") for g in gaps],
        *_by_fraction_rows(at_top),
        *[row for fit in fits for row in _law_rows(fit)],
        *_paper2_rows(ee_rep),
    ]
    return _markdown(rows), {"report": rep, "fit": fits[0], "fits": fits, "early_exposure": ee_rep}


def _by_fraction_rows(final: list[dict]) -> list[tuple[str, str, str]]:
    """The gain and the forgetting of every setup at the full budget, NPT first, then by
    fraction. Forgetting also at one learning rate for all (the middle rate every setup
    has): the grid winners differ in rate, and forgetting grows with it."""
    final = sorted(final, key=lambda e: e["fraction"])
    spt = [e for e in final if e["setup"] != "NPT"]
    if not spt:
        return []
    rows = [("relative gain after FT at every SPT fraction (full budget)", "SPT better than NPT (> 0)",
             ", ".join(f"{e['setup'][4:]}: {_pm(e['relative_gain_pct'], '%')}" for e in spt))]
    shared = sorted(set.intersection(*(set(e.get("forgetting_by_ratio") or {}) for e in final)), key=float)
    matched = ""
    if shared:
        k = shared[len(shared) // 2]
        matched = f"; all at lr_ratio {k}: " + ", ".join(
            f"{e['setup'].replace('SPT ', '')}: {_pm(e['forgetting_by_ratio'][k])}" for e in final)
    rows.append(("forgetting: rise of the general validation loss during FT (nats), chosen finetunes",
                 "SPT forgets less than NPT", ", ".join(f"{e['setup'].replace('SPT ', '')}: {_pm(e['forgetting'])}"
                                                         for e in final) + matched))
    return rows


def _paper2_report(results: Path) -> dict:
    """`mixer report` over paper 2's published chains (grid points load with their run)."""
    from mixer.analysis.report import build_report
    from mixer.formats.run import load_runs

    return build_report(load_runs(sorted(r.parent for r in (results / "runs").glob("ee/**/run.json")
                                         if not (r.parent.parent / "run.json").exists())))


def refit_all(results: Path) -> list[dict]:
    """The study domain's law, then each second sweep's (runs/law-<domain>), from the published runs."""
    return [refit(results, Design().domain)] + [refit(results, p.name[len("law-"):])
                                                for p in sorted((results / "runs").glob("law-*"))]


def _markdown(rows: list[tuple[str, str, str]]) -> str:
    md = ["| result | paper | this study (measured) |", "|---|---|---|"]
    return "\n".join(md + [f"| {a} | {b} | {c} |" for a, b, c in rows])


def _multiplier_row(m: dict) -> tuple[str, str, str]:
    """One row per SPT setup: the multiplier against each NPT reference budget, largest first,
    with a saturated reference and crossings on capped finetunes said in words."""
    from mixer.units import format_count

    refs = m.get("references") or [m]
    parts = []
    for ref in refs:
        seeds = ref["over_seeds"] if len(ref["per_seed"]) > 1 else None
        text = (_pm(seeds, "x") + (f"; {ref['text']} from the seed-mean curves" if seeds else "")) if seeds else (
            f"{ref['text']} (1 seed)")
        bounds = ref.get("bounds_over_seeds") or []
        if bounds not in ([], ["="]):
            text += f" (per-seed bounds: {', '.join(bounds)})"
        sat = ref.get("saturation") or {}
        if sat.get("saturated"):
            text += (f"; NPT saturated here ({sat['gain_per_doubling']:+.2g} nats per doubling, seed spread "
                     f"{sat['spread']:.2g}): this counts how soon SPT reaches NPT's plateau")
        if ref.get("spt_at_cap"):
            text += "; the crossing rests on SPT finetunes still improving at their cap (it may lie earlier)"
        if ref.get("npt_at_cap"):
            text += "; NPT's reference finetune was still improving at its cap (its loss is an upper bound)"
        parts.append(f"vs NPT at {format_count(ref['npt_tokens'])}: {text}")
    return (f"compute multiplier, {m['setup']} ({m['spt_points']} checkpoints finetuned)", "1.75x (music)",
            "; ".join(parts))


def _paper2_rows(ee_rep: dict) -> list[tuple[str, str, str]]:
    lam_rows = sorted(ee_rep["early_exposure"], key=lambda e: e["lam"])
    if not lam_rows:
        return []
    best_ret = min(lam_rows, key=lambda e: e["L_ret"]["mean"])
    # Per stage, summed over its grids (a stage's grids differ by warmup steps, which follow the data)
    per_stage: dict[str, Counter] = defaultdict(Counter)
    for p in ee_rep.get("finetuning") or []:
        if p.get("stage") != "finetuning":
            per_stage[p["stage"]].update({k: p[k] for k in ("runs", "at_lowest_rate", "at_highest_rate")})
    edges = [f"{stage}: {n['at_lowest_rate']} of {n['runs']} at the lowest rate, {n['at_highest_rate']} at the highest"
             for stage, n in per_stage.items()]
    rng = lambda k: (f"{min(e[k]['mean'] for e in lam_rows):.2f}-{max(e[k]['mean'] for e in lam_rows):.2f}")  # noqa: E731
    return [
        ("paper 2: lambda with the lowest L_ret (retention after FT on D_ft), every lambda with its seed spread",
         "neither extreme (0 < lambda < 1)",
         f"lambda {best_ret['lam']:g} (" + ", ".join(f"{e['lam']:g}: {_pm(e['L_ret'], '', 4)}" for e in lam_rows)
         + ")"),
        _ranking_row(ee_rep, best_ret, lam_rows),
        ("paper 2: lambdas on the (L_ft, L_ret) / (L_pre, L_ret) Pareto fronts", "intermediate lambdas",
         f"{_front(lam_rows, 'L_ft')} / {_front(lam_rows, 'L_pre')}"),
        ("paper 2: L_ret and L_pre over the lambdas (a uniform guess over 1,024 tokens: 6.93)", "models that do not "
         "collapse", f"L_ret {rng('L_ret')}, L_pre {rng('L_pre')}"),
        ("paper 2: grid winners at an edge of their grid", "none", "; ".join(edges) or "-"),
    ]


def _ranking_row(ee_rep: dict, best: dict, lam_rows: list[dict]) -> tuple[str, str, str]:
    """The lowest-L_ret lambda against the next lowest, seed by seed (each seed is a full
    reseed of the three-stage chain, so the pairs share nothing else)."""
    from statistics import mean, stdev

    others = sorted((e for e in lam_rows if e["lam"] != best["lam"]), key=lambda e: e["L_ret"]["mean"])
    if not others:
        return ("paper 2: the lowest-L_ret lambda against the next, seed by seed", "-", "-")
    nxt = others[0]
    by = {(c["lam"], c["seed"]): c["L_ret"] for c in ee_rep["early_exposure_runs"] if c["L_ret"] is not None}
    diffs = [by[(nxt["lam"], s)] - by[(best["lam"], s)] for s in sorted({s for _, s in by})
             if (best["lam"], s) in by and (nxt["lam"], s) in by]
    spread = f" ± {stdev(diffs):.2g}" if len(diffs) > 1 else ""
    return ("paper 2: the lowest-L_ret lambda against the next, seed by seed", "-",
            f"lambda {best['lam']:g} below {nxt['lam']:g} by {mean(diffs):.3f}{spread} nats; lower at "
            f"{sum(d > 0 for d in diffs)} of {len(diffs)} seed(s)" if diffs else "-")


def _law_rows(fit: dict) -> list[tuple[str, str, str]]:
    from mixer.units import format_count

    h = fit["holdout"]
    if not fit["law"] or not h:
        why = "; ".join(f"{n['what']}: {n['why']}" for n in fit["not_fitted"]) or "no held-out curve"
        return [(f"law ({fit['domain']})", "fit on <= 5% predicts the 10% curve", f"not fitted: {why}")]
    on = h["onset"]
    kinds = sorted({w["kind"] for w in fit.get("warnings") or []})
    base = ", ".join(f"{b['name']} {b['mean_abs_rel_error_pct']:.3g}%" for b in h.get("baselines") or [])
    beats = ("the law beats both" if h.get("law_beats_baselines") else
             "the law does NOT beat " + " or ".join(b["name"] for b in h.get("baselines") or [] if not b["law_beats"]))
    dec = h.get("decomposition") or {}
    floor = f" (floor {dec['floor_nats']:+.2f})" if dec and dec.get("floor_nats") is not None else ""
    parts = (f"; its error, law - observed: train term {dec['train_nats']:+.2f} nats{floor}, gap term "
             f"{dec['gap_nats']:+.2f}" if dec else "")
    npt = "" if not fit.get("npt") or fit["npt"]["enters"] else (
        f"; NPT left out (its test loss does not fall: {fit['npt']['slope_per_doubling']:+.2g} nats per doubling)")

    def onset(x, none):
        return none if x is None else f"{format_count(x)} tokens"

    last = format_count(on["last_checkpoint_tokens"])
    return [
        (f"law ({fit['domain']}) fitted on fractions {', '.join(f'{f:g}' for f in fit['law']['fractions'])}, "
         f"held-out {h['fraction']:g}: test-loss error over the curve", "fit on <= 5% predicts the 10% curve",
         f"mean {h['test']['mean_abs_rel_error_pct']:.3g}%, worst {h['test']['max_abs_rel_error_pct']:.3g}% "
         f"({h['points']} checkpoints); naive baselines {base}: {beats}{parts}{npt}; "
         f"{len(fit.get('warnings') or [])} warning(s){' (' + ', '.join(kinds) + ')' if kinds else ''}"),
        (f"onset of overfitting on the held-out curve ({fit['domain']}), observed / predicted", "predicted by the law",
         f"{onset(on['observed_tokens'], f'none up to {last}')} / "
         f"{onset(on['predicted_tokens'], 'none up to ' + format_count(10 * on['last_checkpoint_tokens']))}"),
    ]


def _front(rows: list[dict], x: str) -> str:
    from mixer.analysis.metrics import pareto_front

    have = [e for e in rows if e[x] and e["L_ret"]]
    idx = pareto_front([e[x]["mean"] for e in have], [e["L_ret"]["mean"] for e in have])
    return "{" + ", ".join(f"{have[i]['lam']:g}" for i in sorted(idx, key=lambda i: have[i]["lam"])) + "}"
