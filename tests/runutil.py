"""Write synthetic RUN folders (docs/formats.md, Run) for tests: run.json + evals.jsonl."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mixer.analysis.scaling import law, token_unit

# A law with the paper's signs (fraction as a fraction, tokens in the unit `mixer fit` uses,
# the power of ten at or below the smallest checkpoint): the gap kernel peaks near 1.4%, the
# floor stays positive at every fraction (C(1) = 0.1).
TRUE_LAW = {"A_train": 1.6, "b_train_s": -0.6, "b_train_g": -0.3, "a1": 5.0, "a2": 0.75, "a3": -55.0,
            "b_gap_s": 2.0, "b_gap_g": -0.1, "k0": 1.0, "k1": 0.1, "k2": 0.002, "k3": 0.9}


def write_run(root: Path, name: str, evals: list[dict | tuple], kind: str = "pretrain", fraction: float | None = 0.0,
              seed: int = 0, model: str = "tiny", model_params: int = 1000, domain: str | None = "music",
              parent: Path | None = None, pretrain_tokens: int | None = None, window: list[float] | None = None,
              parent_checkpoint: str | None = None, mix: str | None = None) -> Path:
    """A run folder. `evals` rows are dicts or (tokens, domain_test, domain_train, general_val)."""
    path = Path(root) / name
    path.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, e in enumerate(evals):
        if not isinstance(e, dict):
            tokens, test, train, general = e
            e = {"tokens": int(tokens), "domain_test_loss": test, "domain_train_loss": train, "general_val_loss": general}
        rows.append({"checkpoint": f"step-{i + 1:08d}", "step": i + 1} | e)
    tokens = rows[-1]["tokens"] if rows else 0
    meta = {"format": "mixer-run/1", "name": name, "kind": kind, "model": model, "model_params": model_params,
            "mix": mix or str(Path(root) / "mixes" / name), "domain": domain, "general": "prose", "fraction": fraction,
            "window": window or [0.0, 1.0], "seed": seed, "tokens": tokens,
            "pretrain_tokens": pretrain_tokens if pretrain_tokens is not None else tokens,
            "parent": str(parent) if parent else None, "parent_checkpoint": parent_checkpoint,
            "hparams": {"lr": 4e-5, "warmup": 100}, "best": None, "status": "done"}
    (path / "run.json").write_text(json.dumps(meta, indent=2))
    (path / "evals.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def law_runs(root: Path, fractions: list[float], tokens: np.ndarray, noise: float = 0.002, seed: int = 0,
             params: dict = TRUE_LAW, gain: tuple[float, float, float] | None = (5.0, -0.1, 0.02)) -> list[Path]:
    """Pretraining runs whose domain losses follow `params` (tokens in the fit's unit) with
    lognormal noise, and (with `gain` = (a, b, c)) one finetune run per pretraining checkpoint
    with dL = a T^b + c (T in tokens)."""
    rng = np.random.default_rng(seed)
    paths = []
    unit = token_unit(tokens)
    for d in fractions:
        curve = law(params, tokens, d, unit)
        train = curve["train"] * np.exp(rng.normal(0, noise, len(tokens)))
        test = curve["test"] * np.exp(rng.normal(0, noise, len(tokens)))
        rows = [(t, float(a), float(b), 3.0 + 0.1 * d) for t, a, b in zip(tokens, test, train)]
        name = f"pre-{d:g}"
        pre = write_run(root, name, rows, fraction=d)
        paths.append(pre)
        if gain is None:
            continue
        for i, (t, l_test) in enumerate(zip(tokens, test)):
            dl = gain[0] * t ** gain[1] + gain[2]
            ft = [(1000, float(l_test - dl / 2), None, 3.05), (2000, float(l_test - dl), None, 3.1),
                  (3000, float(l_test - dl * 0.9), None, 3.2)]
            paths.append(write_run(root, f"ft-{d:g}-{i}", ft, kind="finetune", fraction=1.0, parent=pre,
                                   pretrain_tokens=int(t), parent_checkpoint=f"step-{i + 1:08d}"))
    return paths
