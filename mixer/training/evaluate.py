"""`mixer eval RUN`: every checkpoint -> domain test / domain val / domain train / general val
loss, for runs of any trainer (the one run.json names, through `mixer.training.registry`).

Losses are token-weighted mean cross-entropy (nats) over whole held-out sets (or their
first --max-samples samples), so every run of a study is scored on identical tokens.
Every checkpoint is scored on every held-out set of the run's chain of mixes (its own,
its parent's, ...: a finetune after post-training is scored on the new task's test set,
the post-training domain's and the general validation set), recorded under `heldout`; the
domain test and general validation losses are the first of those the chain has. The domain
validation split and the domain train sample, whose loss's difference from the test loss is
the law's train-test gap, are the sample sets the mixes hold (mixer.formats.sample_sets):
fixed when the mix was built, the same documents for every run of a study, NPT included,
and for SPT runs documents they trained on. The train sample scores pretraining runs only
(the gap is a pretraining curve). Each row records which train sample it used. Nothing here
reads a token store: a run needs its mixes alone.

A finetune (or replay) also scores the checkpoint it started from, as its row `start`
(step 0, tokens 0), on the same samples as its own checkpoints: early stopping's choice
then includes not finetuning at all, so the chosen model is never worse than its start on
the split it is chosen on (paper 1's dL >= 0), and before/after comparisons (forgetting,
the finetuning gain) are on identical samples.

Idempotent: checkpoints already in RUN/evals.jsonl are skipped; each new row is appended
as soon as it is computed, so an interrupted eval resumes where it stopped.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mixer.errors import MixerError
from mixer.formats.mix import MixFiles
from mixer.formats.run import Eval, append_eval, read_evals, read_run_meta, run_path
from mixer.formats.sample_sets import SELECTION, TRAIN_LOSS, SampleSet, has_sample_sets, sample_set
from mixer.training.registry import trainer_of


@dataclass
class EvalSets:
    named: dict[str, np.ndarray]  # every held-out set of the chain's mixes, by name (music-test, prose-val)
    domain_test: str | None  # which of them is the run's domain test set
    general_val: str | None  # ... and its general validation set
    domain_train: np.ndarray | None = None
    domain_val: np.ndarray | None = None
    train_sample: str | None = None  # SampleSet.describe() of domain_train
    notes: list[str] = field(default_factory=list)  # what could not be scored, and why


def mix_chain(run_dir: Path) -> list[MixFiles]:
    """The run's mix, then its parent's, and so on, skipping ancestors' mixes that are gone;
    the run's own mix must be there (its samples are what the run is scored on)."""
    chain, seen = [], set()
    run = Path(run_dir)
    while run is not None and str(run) not in seen:
        seen.add(str(run))
        meta = read_run_meta(run)
        try:
            chain.append(MixFiles.open(run_path(run, meta["mix"])))
        except MixerError as e:
            if not chain:
                where = run / "run.json"
                raise MixerError(f"{e}; it is the mix of {where}: move it back to evaluate the run") from None
        run = run_path(run, meta["parent"]) if meta.get("parent") else None
    return chain


def chain_train_sample(chain: list[MixFiles]) -> SampleSet | None:
    """The domain train sample a run is scored on: that of the first mix of its chain holding
    one, or, where another mix of the chain on the same domain drew its sample from a
    --domain-subset, that one (a finetune mix built without the study's subset is still scored
    on the study's documents)."""
    sets = [s for s in (sample_set(m, TRAIN_LOSS) for m in chain) if s is not None]
    if not sets:
        return None
    same = [s for s in sets if s.record.get("source") == sets[0].record.get("source")]
    return next((s for s in same if s.record.get("drawn_from") == "subset"), same[0])


def eval_sets(run_dir: Path, max_samples: int | None, with_train: bool = True) -> EvalSets:
    """Every held-out set of the run's chain of mixes (a three-stage run is scored on the new
    task's test set, the post-training domain's and the general validation set alike), which
    of them are the run's domain test and general validation sets, and the domain train
    sample (unless not `with_train`) and validation split the mixes hold."""
    chain = mix_chain(run_dir)
    named: dict[str, np.ndarray] = {}
    for mix in chain:
        for name in mix.eval_sets:
            named.setdefault(name, mix.eval_samples(name)[:max_samples])

    def first(role: str) -> str | None:
        return next((n for n in (m.eval_name(role) for m in chain) if n), None)

    train = chain_train_sample(chain) if with_train else None
    val = next((v for v in (sample_set(m, SELECTION) for m in chain) if v is not None), None)
    notes = []
    if chain[0].source("domain") is not None and not has_sample_sets(chain[0]):
        notes.append(f"{chain[0].path}: built by an older mixer, the mix holds no domain train sample or validation "
                     "split; their losses stay empty (rebuild the mix into a new folder to have them)")
    return EvalSets(named, first("domain"), first("general"), None if train is None else train.samples,
                    None if val is None else val.samples[:max_samples], None if train is None else train.describe(),
                    notes)


def mean_loss(model, samples: np.ndarray, batch_size: int, device: str, autocast: str | None = None) -> float:
    """Token-weighted mean next-token cross-entropy over (n, seq_len + 1) samples, for trainers
    whose model is a torch module mapping (b, seq_len) ids to logits: one definition of the
    score whichever trainer made the run. `autocast` ("bfloat16"): the forward pass under
    torch.autocast on `device` in that dtype (a GPU run's precision); the loss is in float32."""
    import contextlib

    import torch
    import torch.nn.functional as F

    total, count = 0.0, 0
    cast = torch.autocast(torch.device(device).type, dtype=getattr(torch, autocast)) if autocast else \
        contextlib.nullcontext()
    with torch.inference_mode(), cast:
        for i in range(0, len(samples), batch_size):
            x = torch.from_numpy(np.asarray(samples[i : i + batch_size]).astype(np.int64)).to(device)
            logits = model(x[:, :-1]).float()
            total += F.cross_entropy(logits.reshape(-1, logits.size(-1)), x[:, 1:].reshape(-1), reduction="sum").item()
            count += x[:, 1:].numel()
    return total / count if count else math.nan


def eval_targets(run: Path) -> list[Path]:
    """RUN itself, or for a grid folder (grid points as sub-runs) its grid points."""
    subs = sorted(p.parent for p in Path(run).glob("*/run.json"))
    if subs and (not (Path(run) / "run.json").is_file() or "grid" in (read_run_meta(run).get("hparams") or {})):
        return subs
    return [Path(run)]


START = "start"  # the evals.jsonl row of the checkpoint a finetune started from


def start_checkpoint(run_dir: Path, meta: dict) -> Path | None:
    """The checkpoint a finetune or replay started from (run.json `parent_checkpoint`, relative
    to the run when relative); None for a pretraining run or when it is gone."""
    if meta.get("kind") == "pretrain" or not meta.get("parent_checkpoint"):
        return None
    ckpt = run_path(run_dir, meta["parent_checkpoint"])
    return ckpt if ckpt.is_dir() else None


def evaluate_run(run_dir: Path, max_samples: int | None = None, device: str | None = None,
                 threads: int | None = None, progress=None) -> list[Eval]:
    """Evaluate the checkpoints not yet in RUN/evals.jsonl; all evaluations, in training order.
    Refuses to add rows whose domain train loss would be on other documents than the rows
    already there (a curve must be on one sample to be a curve)."""
    run_dir = Path(run_dir)
    trainer = trainer_of(read_run_meta(run_dir), run_dir)
    ckpts = trainer.checkpoints(run_dir)
    if not ckpts:
        raise MixerError(f"{run_dir}: no checkpoints to evaluate (did mixer train finish? see its train.log)")
    rows = read_evals(run_dir)
    done = {r.checkpoint for r in rows}
    todo = [c for c in ckpts if c.name not in done]
    meta = read_run_meta(run_dir)
    start = start_checkpoint(run_dir, meta) if START not in done else None
    if start is not None:
        todo.insert(0, start)
    if not todo:
        return rows
    # The domain train loss is the law's train-test gap, a pretraining curve; a finetune trains on
    # that split itself and is not scored on the sample (it was ~40% of a finetune's evaluation).
    sets = eval_sets(run_dir, max_samples, with_train=meta.get("kind") == "pretrain")
    earlier = {r.domain_train_sample for r in rows if r.domain_train_loss is not None}
    if earlier and earlier != {sets.train_sample}:
        raise MixerError(f"{run_dir / 'evals.jsonl'}: earlier checkpoints' domain train loss is on another sample "
                         f"({', '.join(sorted(map(str, earlier)))}; the mixes now hold {sets.train_sample}): a mix was "
                         "rebuilt or replaced; delete evals.jsonl to re-evaluate every checkpoint")
    for note in sets.notes:
        sys.stderr.write(f"mixer: warning: {note}\n")
    tokens_per_step = trainer.tokens_per_step(run_dir)
    table = trainer.train_log(run_dir)
    by_step = {r.step: r for r in rows}
    for ckpt in todo:
        model = trainer.load_for_eval(run_dir, ckpt, device, threads)
        is_start = ckpt is start
        # `final` after a saved last step is the same model: copy, do not recompute
        same = None if is_start else by_step.get(model.step)
        score = lambda x: None if x is None or not len(x) else round(float(model.loss(np.asarray(x))), 6)  # noqa: E731
        if same is not None:
            heldout = dict(same.heldout or {})
            losses = {k: getattr(same, k) for k in ("domain_train_loss", "domain_val_loss")}
        else:
            heldout = {name: score(x) for name, x in sets.named.items()}
            losses = {"domain_train_loss": score(sets.domain_train), "domain_val_loss": score(sets.domain_val)}
        step = 0 if is_start else model.step
        tokens = step * tokens_per_step
        logged = {} if is_start else table.get(tokens) or {}
        row = Eval(checkpoint=START if is_start else ckpt.name, step=step, tokens=tokens,
                   domain_test_loss=heldout.get(sets.domain_test) if sets.domain_test else None,
                   general_val_loss=heldout.get(sets.general_val) if sets.general_val else None, **losses,
                   train_loss=logged.get("train_loss"), lr=logged.get("lr"),
                   domain_train_sample=sets.train_sample if losses["domain_train_loss"] is not None else None,
                   heldout=heldout or None)
        append_eval(run_dir, row)
        if not is_start:
            by_step.setdefault(model.step, row)
        if progress:
            progress(row)
    return read_evals(run_dir)
