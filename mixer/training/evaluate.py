"""`mixer eval RUN`: every checkpoint -> domain test / domain train / general val loss.

Losses are token-weighted mean cross-entropy (nats) over whole held-out sets (or their
first --max-samples samples), so every run of a study is scored on identical tokens.
Held-out sets come from the run's mix, else its parent's (a finetune mix may lack the
general val set that forgetting is measured on). The domain train loss is on a fixed
sample: the first domain samples of the mix in stored order (exactly data the run's
own mix trains on, whatever domain subset it was built from); for a mix without domain
samples (NPT), the first samples of the domain store's train split.

Idempotent: checkpoints already in RUN/evals.jsonl are skipped; each new row is appended
as soon as it is computed, so an interrupted eval resumes where it stopped.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mixer.errors import MixerError

EVALS = "evals.jsonl"


@dataclass
class EvalSets:
    domain_test: np.ndarray | None
    domain_train: np.ndarray | None
    general_val: np.ndarray | None


def mix_chain(run_dir: Path) -> list:
    """The run's mix, then its parent's, and so on (MixFiles), skipping mixes that are gone."""
    from trainer_adapters.litgpt.mixfiles import MixFileError, MixFiles

    chain, seen = [], set()
    run = run_dir
    while run is not None and str(run) not in seen:
        seen.add(str(run))
        meta = read_run_meta(run)
        try:
            chain.append(MixFiles.open(meta["mix"]))
        except MixFileError:
            if not chain:
                raise
        run = Path(meta["parent"]) if meta.get("parent") else None
    return chain


def domain_train_samples(mix, n: int) -> np.ndarray | None:
    """The first `n` samples of the mix's domain source, in stored order, via provenance."""
    src = mix.source("domain")
    if src is None or not int(src.get("samples", 0)):
        return None
    out, have = [], 0
    for k in range(len(mix.manifest["shards"])):
        rows = np.flatnonzero(np.asarray(mix.provenance(k)["source"]) == int(src["id"]))[: n - have]
        if len(rows):
            out.append(np.asarray(mix.shard(k)[rows]))
            have += len(rows)
        if have >= n:
            break
    return np.concatenate(out) if out else None


def eval_sets(run_dir: Path, max_samples: int | None, train_samples: int) -> EvalSets:
    chain = mix_chain(run_dir)

    def heldout(role: str) -> np.ndarray | None:
        for mix in chain:
            name = mix.eval_name(role)
            if name:
                return np.asarray(mix.eval_samples(name)[:max_samples])
        return None

    train = None
    for mix in chain:
        train = domain_train_samples(mix, train_samples)
        if train is not None:
            break
    if train is None:  # NPT: no domain samples in the mix; unseen train data still anchors the fit at d = 0
        train = next((t for t in (store_train_samples(m, train_samples) for m in chain) if t is not None), None)
    return EvalSets(heldout("domain"), train, heldout("general"))


def store_train_samples(mix, n: int) -> np.ndarray | None:
    """The first `n` samples of the domain store's train split (canonical order), laid out as
    a stream is: seq_len + 1 tokens each, one-token overlap. None when the store is gone."""
    from mixer.formats.store import open_store

    src = mix.source("domain")
    if src is None or not src.get("store"):
        return None
    store_dir = Path(src["store"])
    try:
        tokens = open_store(store_dir.parent, store_dir.name).tokens("train")
    except MixerError:
        return None
    seq = mix.seq_len
    k = min(n, (len(tokens) - 1) // seq)
    if k <= 0:
        return None
    idx = np.arange(k)[:, None] * seq + np.arange(seq + 1)[None, :]
    return np.asarray(tokens)[idx].astype(mix.dtype)


def read_run_meta(run_dir: Path) -> dict:
    f = Path(run_dir) / "run.json"
    if not f.is_file():
        raise MixerError(f"{f}: missing; {run_dir} is not a run made by mixer train")
    try:
        return json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise MixerError(f"{f}: not valid JSON ({e.msg} at line {e.lineno})") from None


def checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoint folders in training order: out/step-*, then out/final."""
    out = Path(run_dir) / "out"
    steps = sorted(out.glob("step-*"), key=lambda p: int(p.name.split("-")[1]))
    final = out / "final"
    return steps + ([final] if final.is_dir() else [])


def load_checkpoint(ckpt_dir: Path, device: str):
    """(GPT model in eval mode, optimizer step count); one-line errors for missing or corrupt files."""
    import torch
    import yaml
    from litgpt.model import GPT, Config

    weights, cfg_file = ckpt_dir / "lit_model.pth", ckpt_dir / "model_config.yaml"
    for f in (weights, cfg_file):
        if not f.is_file():
            raise MixerError(f"{f}: missing; the checkpoint is incomplete (was the run killed while saving?)")
    try:
        state = torch.load(weights, map_location="cpu", mmap=True, weights_only=True)
        config = Config(**yaml.safe_load(cfg_file.read_text()))
    except Exception as e:  # noqa: BLE001 - torch raises many types for a damaged file
        why = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0]}"
        raise MixerError(f"{weights}: cannot read the checkpoint ({why})") from None
    params = state.get("model", state)  # raw pretrain checkpoint or converted state dict
    params = {k.replace("_orig_mod.", ""): v for k, v in params.items()}
    model = GPT(config)
    try:
        model.load_state_dict(params)
    except RuntimeError as e:
        raise MixerError(f"{weights}: does not fit its model_config.yaml ({str(e).splitlines()[0]})") from None
    return model.to(device).eval(), int(state.get("step_count", 0))


def mean_loss(model, samples: np.ndarray, batch_size: int, device: str) -> float:
    """Token-weighted mean next-token cross-entropy over (n, seq_len + 1) samples."""
    import torch
    import torch.nn.functional as F

    total, count = 0.0, 0
    with torch.inference_mode():
        for i in range(0, len(samples), batch_size):
            x = torch.from_numpy(np.asarray(samples[i : i + batch_size]).astype(np.int64)).to(device)
            logits = model(x[:, :-1]).float()
            total += F.cross_entropy(logits.reshape(-1, logits.size(-1)), x[:, 1:].reshape(-1), reduction="sum").item()
            count += x[:, 1:].numel()
    return total / count if count else math.nan


def read_evals(run_dir: Path) -> list[dict]:
    f = Path(run_dir) / EVALS
    if not f.is_file():
        return []
    rows = []
    for lineno, line in enumerate(f.read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                raise MixerError(f"{f}:{lineno}: not valid JSON; remove the line and re-run mixer eval") from None
    return rows


def evaluate_run(run_dir: Path, max_samples: int | None = None, train_samples: int = 64,
                 device: str | None = None, threads: int | None = None, progress=None) -> list[dict]:
    """Evaluate the checkpoints not yet in RUN/evals.jsonl; all rows, in training order."""
    import torch
    import yaml
    from trainer_adapters.litgpt.logs import merge_metrics, train_table

    run_dir = Path(run_dir)
    read_run_meta(run_dir)  # a clear error when RUN is not a run
    ckpts = checkpoints(run_dir)
    if not ckpts:
        raise MixerError(f"{run_dir}/out: no checkpoints to evaluate (did mixer train finish? see {run_dir}/train.log)")
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    tokens_per_step = int(config["train"]["global_batch_size"]) * int(config["train"]["max_seq_length"])
    micro = int(config["train"]["micro_batch_size"])
    table = train_table(merge_metrics(run_dir / "out", run_dir / "metrics.csv"))
    rows = read_evals(run_dir)
    done = {r["checkpoint"] for r in rows}
    todo = [c for c in ckpts if c.name not in done]
    if not todo:
        return rows
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        from trainer_adapters.litgpt.config import cpu_threads

        torch.set_num_threads(cpu_threads(threads))
    sets = eval_sets(run_dir, max_samples, train_samples)
    by_step = {r["step"]: r for r in rows}
    for ckpt in todo:
        model, step = load_checkpoint(ckpt, device)
        row = {"checkpoint": ckpt.name, "step": step, "tokens": step * tokens_per_step}
        for key in ("domain_test", "domain_train", "general_val"):
            samples = getattr(sets, key)
            if step in by_step:  # `final` after a saved last step is the same model: copy, do not recompute
                row[f"{key}_loss"] = by_step[step][f"{key}_loss"]
            elif samples is None or not len(samples):
                row[f"{key}_loss"] = None
            else:
                row[f"{key}_loss"] = round(mean_loss(model, samples, micro, device), 6)
        logged = table.get(row["tokens"])
        row["train_loss"] = logged["train_loss"] if logged else None
        row["lr"] = logged["lr"] if logged else None
        with open(run_dir / EVALS, "a") as f:
            f.write(json.dumps(row) + "\n")
        rows.append(row)
        by_step.setdefault(step, row)
        if progress:
            progress(row)
    return rows


def best_checkpoint(rows: list[dict]) -> dict | None:
    """The early-stopping winner: lowest domain test loss."""
    have = [r for r in rows if r.get("domain_test_loss") is not None and math.isfinite(r["domain_test_loss"])]
    if not have:
        return None
    b = min(have, key=lambda r: r["domain_test_loss"])
    return {"checkpoint": b["checkpoint"], "domain_test_loss": b["domain_test_loss"]}
