"""Benchmark: wall time of one `mixer fit` (fit_law: stages 1-3, 64 starts, held-out report).

    .venv/bin/python bench/fit.py [--repeat 5]

Cases: the known-answer studies of tests/analysis/test_law_known_answer.py (6 fractions x 12
checkpoints, 0.5% noise, laptop and paper scale) and, when present, the published study's
music and proofs sweeps (docs/results/study/runs, seeds pooled), each with fraction 0.2
held out. Prints the median and the range over the repeats (wall and CPU time: on a shared machine the
CPU time is the steadier figure), and the joint fit's share.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# bench/ holds a tokenize.py that would shadow the standard library's: import from the tests instead.
sys.path[0] = str(ROOT / "tests" / "analysis")

import test_law_known_answer as known  # noqa: E402

from mixer.analysis import joint_fit  # noqa: E402
from mixer.analysis.scaling import fit_law  # noqa: E402


def published(domain: str) -> list | None:
    from mixer.analysis.fit import fit_inputs
    from mixer.formats.run import load_runs

    runs_dir = ROOT / "docs" / "results" / "study" / "runs"
    pattern = "law-proofs/*/run.json" if domain == "proofs" else "s*/*/run.json"
    runs = sorted(p.parent for p in runs_dir.glob(pattern) if not p.parent.name.startswith("small"))
    return fit_inputs(load_runs(runs), "tiny", domain)["curves"] if runs else None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args()
    cases = {f"known answer, {s} scale": known.study(s, known.NOISE, 0) for s in sorted(known.SCALES)}
    for domain in ("music", "proofs"):
        curves = published(domain)
        if curves:
            cases[f"published study, {domain}"] = curves
    joint_time = []
    original = joint_fit.fit_joint

    def timed(*args, **kw):
        t = time.perf_counter()
        out = original(*args, **kw)
        joint_time.append(time.perf_counter() - t)
        return out

    import mixer.analysis.scaling as scaling

    scaling.fit_joint = timed
    for name, curves in cases.items():
        walls, cpus = [], []
        joint_time.clear()
        for _ in range(a.repeat):
            t, c = time.perf_counter(), time.process_time()
            fit = fit_law(curves, holdout=0.2)
            walls.append(time.perf_counter() - t)
            cpus.append(time.process_time() - c)
        points = sum(len(c.tokens) for c in curves)
        print(f"{name}: {len(curves)} fractions, {points} checkpoints: fit_law median {statistics.median(walls):.2f} s "
              f"(range {min(walls):.2f}-{max(walls):.2f}, {a.repeat} calls; CPU {statistics.median(cpus):.2f} s), "
              f"of which the joint fit "
              f"{statistics.median(joint_time):.2f} s ({fit['law']['starts']} starts, {fit['law']['evaluations']} "
              f"residual evaluations); held-out 0.2 mean error {fit['holdout']['test']['mean_abs_rel_error_pct']:.2f}%")


if __name__ == "__main__":
    main()
