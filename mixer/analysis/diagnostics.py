"""The fit's warnings: everything that makes a fitted law less than trustworthy, one line
each, for fit.json's `warnings`, the top of `mixer fit`'s output, fit.png and the study's
table. A reader who reads nothing else should still see them."""

from __future__ import annotations

KINDS = ("not fitted", "convergence", "bound", "shape", "unchecked", "npt", "holdout")


def fit_warnings(fit: dict) -> list[dict]:
    """[{"kind", "message"}] from the body fit_law returns (kinds in KINDS)."""
    out: list[dict] = []

    def warn(kind: str, message: str) -> None:
        out.append({"kind": kind, "message": message})

    law = fit.get("law")
    for n in fit.get("not_fitted") or []:
        if n["what"] == "joint law":
            warn("not fitted", f"no joint law: {n['why']}")
    npt = fit.get("npt")
    if npt and not npt["enters"]:
        warn("npt", npt["why"])
    if law:
        if not law["converged"]:
            warn("convergence", f"the joint fit did not converge ({law.get('optimizer')}): its parameters are the best "
                                "point found, not a minimum")
        for b in law.get("at_bound") or []:
            warn("bound", f"{b['param']} = {b['value']:.4g} is at its {b['side']} bound ({b['bound']:g}; {b['why']}): "
                          "the data pushed it to the edge of what the law allows")
        p = law["params"]
        for c in fit.get("checks") or []:
            if not c["ok"]:
                warn("shape", f"shape check failed: {c['check']} (b_train_g {p['b_train_g']:.3g}, b_train_s "
                              f"{p['b_train_s']:.3g}, b_gap_g {p['b_gap_g']:.3g}, b_gap_s {p['b_gap_s']:.3g}, "
                              f"a2 {p['a2']:.3g}, a3 {p['a3']:.3g})")
    for s in fit.get("shape_checks") or []:
        if s.get("not_positive"):
            warn("shape", f"stage 2, {s['shape']}: " + s["note"].split(";")[0])
        if s["dof"] <= 0:
            warn("unchecked", f"stage 2, {s['shape']}: {len(s['residuals'])} fraction(s) for "
                              f"{len(s['residuals']) - s['dof']} coefficients, so its shape is not checked by the data "
                              "(the joint law's bounds still hold it)")
    h = fit.get("holdout")
    if h and h.get("test"):
        mine = h["test"]["mean_abs_rel_error_pct"]
        for b in h.get("baselines") or []:
            if not b["law_beats"]:
                warn("holdout", f"on the held-out fraction {h['fraction']:g} the law ({mine:.3g}% mean error) does not "
                                f"beat the naive '{b['name']}' baseline ({b['mean_abs_rel_error_pct']:.3g}%: {b['what']})")
    return out


def format_warnings(fit: dict) -> list[str]:
    """The warnings as lines a terminal shows first."""
    ws = fit.get("warnings") or []
    if not ws:
        return []
    return [f"WARNING ({len(ws)} in all): read these before trusting the law"] + [
        f"  WARNING [{w['kind']}] {w['message']}" for w in ws]
