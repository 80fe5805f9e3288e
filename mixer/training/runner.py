"""`mixer train`: a mix (and for finetuning a parent run) -> RUN/ with run.json, the trainer's
checkpoints and logs, and evals.jsonl (docs/formats.md, Run).

This module decides the experiment, whatever the trainer: steps that fit the mix, batch
split, learning-rate schedule, save/validation interval (once per domain epoch when
finetuning), early stopping, which parent checkpoint a finetune starts from, and run.json.
It hands a `RunSpec` to the trainer (`mixer.training.trainer`), found by name through
`mixer.training.registry` and recorded in run.json, then evaluates every checkpoint.
"""

from __future__ import annotations

import inspect
import itertools
import re
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Sequence

from mixer import __version__
from mixer.errors import MixerError, UsageError
from mixer.formats.mix import MixFiles
from mixer.formats.run import (RUN_FORMAT, SELECT_ON, Eval, RunKind, best_eval, read_evals, read_run_meta,
                               run_path, write_run_meta)
from mixer.formats.sample_sets import SELECTION, SampleSet, has_sample_sets, sample_set
from mixer.training.config import FinetuneConfig, Machine, PretrainConfig
from mixer.training.evaluate import START, evaluate_run, start_checkpoint
from mixer.training.registry import DEFAULT, get_trainer, name_of, trainer_of
from mixer.training.schedules import DEFAULT_HORIZON, FINETUNE_SCHEDULES, PAPER_LR_RATIOS, SCHEDULES, lr_at, run_lr
from mixer.training.throughput import breakdown, throughput
from mixer.training.trainer import HeldoutFile, Job, RunSpec, Trainer

# The paper's middle finetuning rate (4e-5) relative to where its pretraining stopped.
DEFAULT_LR_RATIO = PAPER_LR_RATIOS[1]
GRID_KEYS = {"lr": float, "lr_ratio": float, "warmup": int, "weight_decay": float, "min_lr": float}
# A warmup longer than this share of the run's steps is capped unless asked for (--warmup): the
# OLMo presets' 50-200 steps exceed a short finetune, whose rate would then never reach its target.
WARMUP_CAP = 0.1


@dataclass
class RunPlan:
    spec: RunSpec
    job: Job  # the spec as the trainer will run it
    meta: dict  # run.json as planned; meta["trainer"] names the trainer
    trainer: Trainer

    @property
    def run_dir(self) -> Path:
        return self.spec.run_dir

    def config_text(self) -> str:
        return self.job.config_text()

    def run(self, echo: bool = False, evaluate: bool = True, eval_samples: int | None = None) -> dict:
        """Train and evaluate (execute); run.json as written."""
        return execute(self, echo=echo, evaluate=evaluate, eval_samples=eval_samples)

    def write_sbatch(self, argv: list[str], job: dict, where: Path | None = None) -> Path:
        """WHERE/sbatch.sh (default RUN's): a Slurm job (#SBATCH settings `job`) that runs the
        command `argv` in an allocation of this run's nodes and devices; its path."""
        make = getattr(self.trainer, "sbatch_script", None)
        if make is None:
            raise UsageError(f"--sbatch: trainer {self.meta.get('trainer')} cannot write a Slurm job script")
        return make(self.job, argv, job, where or self.run_dir)


# -- planning ---------------------------------------------------------------------------


def _steps(mix: MixFiles, global_batch: int, tokens: int | None) -> int:
    """Whole optimizer steps the run takes; refuses more than the mix holds (no wrap-around)."""
    per_step = global_batch * mix.seq_len
    have = mix.samples // global_batch
    steps = have if tokens is None else tokens // per_step
    if tokens is not None and steps > have:
        raise UsageError(f"--tokens {tokens}: the mix {mix.path} holds {mix.samples * mix.seq_len} tokens "
                         f"({have} steps of {global_batch} samples); build a bigger mix or ask for fewer")
    if steps < 1:
        raise UsageError(f"{mix.path}: {mix.samples} samples do not make one step of batch {global_batch}; "
                         "lower --batch-size or build a bigger mix")
    return steps


def run_steps(mix_path: Path, batch: int, tokens: int | None) -> int:
    """The optimizer steps a run of `batch` samples per step takes on the mix."""
    return _steps(MixFiles.open(mix_path), batch, tokens)


def cap_warmups(values: list[int], steps: int) -> tuple[list[int], dict | None]:
    """Default warmups capped at WARMUP_CAP of the run's steps (duplicates dropped, order kept),
    and the record run.json keeps of it (None when nothing was capped)."""
    cap = max(1, int(WARMUP_CAP * steps))
    capped = list(dict.fromkeys(min(int(v), cap) for v in values))
    if capped == [int(v) for v in values]:
        return capped, None
    shown = ", ".join(map(str, values))
    return capped, {"requested": [int(v) for v in values], "capped_to": capped, "share": WARMUP_CAP, "steps": steps,
                    "reason": f"the default warmup ({shown} steps) is more than {WARMUP_CAP:.0%} of the run's {steps} "
                              f"optimizer steps, so the rate would never reach its target; capped at {cap} "
                              "(--warmup sets it explicitly)"}


def _machine(tr: Trainer, name: str, m: Machine):
    """The trainer's machine. Several nodes only for a trainer whose `machine` takes `nodes`."""
    if m.nodes is not None and m.nodes < 1:
        raise UsageError(f"--num-nodes {m.nodes}: must be at least 1")
    if m.nodes is None or m.nodes == 1:
        return tr.machine(m.precision, m.devices, m.threads)
    if "nodes" not in inspect.signature(tr.machine).parameters:
        raise UsageError(f"--num-nodes {m.nodes}: trainer {name} trains on one node")
    return tr.machine(m.precision, m.devices, m.threads, nodes=m.nodes)


def _ranks(machine) -> int:
    """Data-parallel ranks: devices per node times nodes."""
    return machine.devices * getattr(machine, "nodes", 1)


def _batches(batch: int, micro: int, ranks: int) -> tuple[int, int]:
    micro = min(micro, batch // ranks) or 1
    if batch % ranks or (batch // ranks) % micro:
        raise UsageError(f"--batch-size {batch} must split evenly over {ranks} devices (all nodes) and "
                         f"micro-batches of {micro}")
    return batch, micro


# What `mixer train --sbatch` and Slurm put in RUN before its run starts: the job script and the
# job's output file, which the job's own `mixer train` must find and keep.
_JOB_FILE = re.compile(r"^(sbatch\.sh|slurm-\d+\.out)$")


def _run_dir(out: Path, dry_run: bool, trainer: str) -> tuple[Path, bool]:
    """(RUN, whether it holds an unfinished run to resume). A finished run is never overwritten."""
    out = out.expanduser().resolve()
    if (out / "run.json").is_file():
        meta = read_run_meta(out)
        if meta.get("status") == "done" and not dry_run:
            raise MixerError(f"{out}: already trained (status done); choose another --out")
        started = name_of(meta)
        if started != trainer:
            raise UsageError(f"--trainer {trainer}: {out} was started with {started}; resume it with "
                             f"--trainer {started} or choose another --out")
        return out, True
    if out.exists() and any(not _JOB_FILE.match(e.name) for e in out.iterdir()) and not dry_run:
        raise MixerError(f"{out}: exists and is not a run; choose another --out")
    return out, False


def _check_resume(run_dir: Path, batch: int) -> None:
    """An unfinished run resumes on any devices and nodes that split its global batch, never
    with another batch: its steps, schedule and the samples of each step are fixed."""
    started = (read_run_meta(run_dir).get("hparams") or {}).get("batch_size")
    if started is not None and int(started) != batch:
        raise UsageError(f"--batch-size {batch}: {run_dir} was started with a global batch of {started} samples; "
                         f"resume it with --batch-size {started} (any --devices and --num-nodes that split it)")


def _mix_meta(mix: MixFiles) -> dict:
    """What a run keeps of its mix, so reports need no mix: domain share, window, epochs of
    the domain data, and the recipe stage that built it (a three-stage pipeline's lambda)."""
    frac = mix.manifest.get("fraction") or {}
    requested, achieved = frac.get("requested"), frac.get("achieved")
    src = mix.source("domain") or {}
    return {"mix": str(mix.path), "domain": mix.manifest.get("domain"), "general": mix.manifest.get("general"),
            "fraction": requested if requested is not None else achieved, "window": frac.get("window", [0.0, 1.0]),
            "domain_epochs": src.get("epochs"), "stage": mix.manifest.get("stage"),
            "seed": mix.manifest.get("seed", 0)}


def _horizon_tokens(tokens: int, horizon: float | None, schedule_tokens: int | None, anneal: bool) -> int:
    """The cosine's length in tokens: by default DEFAULT_HORIZON times the run, as the paper's
    2T-token schedule cut at 200B, so no checkpoint of the run is annealed."""
    given = [flag for flag, v in (("--horizon", horizon), ("--schedule-tokens", schedule_tokens),
                                  ("--anneal", anneal or None)) if v is not None]
    if len(given) > 1:
        raise UsageError(f"{' and '.join(given)}: give one way to set the cosine horizon")
    if anneal:
        return tokens
    if schedule_tokens is not None:
        if schedule_tokens < tokens:
            raise UsageError(f"--schedule-tokens {schedule_tokens}: shorter than the run ({tokens} tokens); the "
                             "cosine would reach its floor before training ends (use --anneal for exactly the run)")
        return schedule_tokens
    h = DEFAULT_HORIZON if horizon is None else horizon
    if not h >= 1:
        raise UsageError(f"--horizon {h:g}: the cosine horizon is a multiple of the run, at least 1 (1 = --anneal)")
    return round(h * tokens)


def plan_pretrain(mix_path: Path, out: Path, cfg: PretrainConfig, dry_run: bool = False) -> RunPlan:
    """A pretraining run of `cfg.model` on MIX into OUT (an unfinished run there resumes)."""
    model, m = cfg.model, cfg.machine
    name = m.trainer or DEFAULT
    tr = get_trainer(name)
    p = tr.defaults(model, "pretrain")
    mix = MixFiles.open(mix_path)
    machine = _machine(tr, name, m)
    batch, micro = _batches(cfg.batch or p["batch"], cfg.micro or p["micro_batch"], _ranks(machine))
    steps = _steps(mix, batch, cfg.tokens)
    run_dir, resume = _run_dir(out, dry_run, name)
    if resume:
        _check_resume(run_dir, batch)
    lr = cfg.lr if cfg.lr is not None else p["lr"]
    min_lr = cfg.min_lr if cfg.min_lr is not None else (p["min_lr"] if lr == p["lr"] else lr / 10)
    capped, warmup = None, cfg.warmup
    if warmup is None:
        (warmup,), capped = cap_warmups([max(1, round(p["warmup_fraction"] * steps))], steps)
    save = cfg.save_every or max(1, steps // max(1, cfg.checkpoints))
    run_tokens = steps * batch * mix.seq_len
    horizon_tokens = _horizon_tokens(run_tokens, cfg.horizon, cfg.schedule_tokens, cfg.anneal)
    horizon_steps = horizon_tokens / (batch * mix.seq_len)
    spec = RunSpec(kind="pretrain", run_dir=run_dir, mix=mix, model=model, steps=steps, global_batch=batch,
                   micro_batch=micro, lr=lr, min_lr=min_lr, warmup_steps=warmup, weight_decay=p["weight_decay"],
                   schedule="cosine", schedule_tokens=horizon_tokens if horizon_tokens > run_tokens else None,
                   decay_fraction=0.0, save_interval=save, val_sets=None, val_max_samples=cfg.val_samples,
                   patience=0, seed=cfg.seed, machine=machine, resume=resume)
    job = tr.plan(spec)
    meta = {"format": RUN_FORMAT, "name": run_dir.name, "kind": "pretrain", "trainer": name, "model": model,
            "model_params": None, **_mix_meta(mix), "tokens": spec.tokens, "pretrain_tokens": spec.tokens,
            "parent": None, "parent_checkpoint": None,
            "hparams": {"lr": lr, "min_lr": min_lr, "warmup": warmup, "batch_size": batch, "schedule": "cosine",
                        "schedule_tokens": horizon_tokens, "horizon": horizon_tokens / run_tokens,
                        "horizon_steps": horizon_steps, "annealed": horizon_tokens == run_tokens,
                        "final_lr": lr_at(steps, lr, min_lr, warmup, steps, "cosine", horizon_steps),
                        "weight_decay": p["weight_decay"], "steps": steps, "save_interval": save,
                        **({"warmup_capped": capped} if capped else {})},
            "best": None, "status": "planned", "mixer_version": __version__}
    return RunPlan(spec, job, meta, tr)


def _parent_checkpoint(trainer: Trainer, parent: Path, name: str | None, pmeta: dict | None = None) -> Path:
    """The parent's checkpoint by name (or path). Default: for a pretraining parent its last
    (final, else the last step); for a finetune parent (a post-training stage) its
    early-stopping winner, the model that stage produced."""
    have = trainer.checkpoints(parent)
    if not name:
        if not have:
            raise MixerError(f"{parent}: the parent run has no checkpoints")
        best = (pmeta or {}).get("best") or {}
        if (pmeta or {}).get("kind") != "pretrain" and best.get("checkpoint"):
            name = best["checkpoint"]
        else:
            return have[-1].resolve()
    if name == START:  # the finetune parent's winner is the model it started from (it never improved on it)
        start = start_checkpoint(parent, pmeta or read_run_meta(parent))
        if start is None:
            raise MixerError(f"{parent / 'run.json'}: its chosen checkpoint is the one it started from, "
                             f"{(pmeta or {}).get('parent_checkpoint')}, which is gone")
        return start.resolve()
    for c in have:
        if c.name == name:
            return c.resolve()
    if Path(name).is_dir():
        return Path(name).resolve()
    listed = ", ".join(c.name for c in have) or "none"
    raise MixerError(f"--checkpoint {name}: missing from {parent} (its checkpoints: {listed})")


def reference_lr(trainer: Trainer, parent: Path, pmeta: dict, ckpt: Path) -> float | None:
    """The pretraining rate a finetune's learning rate is a multiple of: the parent's rate at
    the checkpoint finetuned from, or, when the parent is itself a finetune (a post-training
    stage), the pretraining rate that one was scaled from."""
    if pmeta.get("kind") == "pretrain":
        return run_lr(pmeta, trainer.step_of(ckpt))
    ref = (pmeta.get("hparams") or {}).get("reference_lr")
    return float(ref) if ref is not None else None


def plan_finetune(kind: RunKind, mix_path: Path, out: Path, parent: Path, cfg: FinetuneConfig,
                  dry_run: bool = False, warmup_capped: dict | None = None) -> RunPlan:
    """A finetune (or replay) of `parent` on MIX; the trainer is the parent's. Early stopping
    (and, in a grid, the choice of configuration) uses the domain validation split
    (`select_on="val"`), or the test split (`"test"`, the paper's protocol). Without `warmup`,
    the middle of the preset's warmup grid, capped at WARMUP_CAP of the steps; a `warmup` is
    used as given (`warmup_capped`: the record of a cap the caller applied to its defaults)."""
    select_on, schedule, trainer = cfg.select_on, cfg.schedule, cfg.machine.trainer
    if select_on not in SELECT_ON:
        raise UsageError(f"--select-on {select_on!r}: expected one of {', '.join(SELECT_ON)}")
    parent = parent.expanduser().resolve()
    pmeta = read_run_meta(parent)
    if "grid" in (pmeta.get("hparams") or {}) and (pmeta.get("best") or {}).get("run"):
        parent = parent / pmeta["best"]["run"]  # a grid: continue from its winning grid point
        pmeta = read_run_meta(parent)
    name = name_of(pmeta)
    if trainer and trainer != name:
        raise UsageError(f"--trainer {trainer}: {parent} was trained with {name}; a finetune continues with it")
    tr = trainer_of(pmeta, parent)
    mix = MixFiles.open(mix_path)
    machine = _machine(tr, name, cfg.machine)
    f = tr.defaults(pmeta.get("model") or "", "finetune")
    ckpt = _parent_checkpoint(tr, parent, cfg.checkpoint, pmeta)
    _check_tokenizer(mix, parent, pmeta)
    batch, micro = _batches(cfg.batch or f["batch"], cfg.micro or f["micro_batch"], _ranks(machine))
    steps = _steps(mix, batch, cfg.tokens)
    run_dir, resume = _run_dir(out, dry_run, name)
    if resume:
        _check_resume(run_dir, batch)
    ref = reference_lr(tr, parent, pmeta, ckpt)
    lr, lr_ratio, warmup = cfg.lr, cfg.lr_ratio, cfg.warmup
    if lr is not None and lr_ratio is not None:
        raise UsageError("--lr and --lr-ratio: give the rate or its ratio to the parent's, not both")
    if lr is None:
        if ref is None:
            raise MixerError(f"{parent / 'run.json'}: no learning-rate schedule recorded (a run from an older mixer); "
                             "pass --lr")
        lr = (DEFAULT_LR_RATIO if lr_ratio is None else lr_ratio) * ref
    if warmup is None:  # one run outside a grid: the middle of the preset's warmup grid
        w = f["warmup"]
        (warmup,), warmup_capped = cap_warmups([int(w[len(w) // 2]) if isinstance(w, (list, tuple)) else int(w)],
                                                steps)
    wd = cfg.weight_decay if cfg.weight_decay is not None else f["weight_decay"]
    every = cfg.eval_every or _eval_interval(mix, batch, steps)
    domain_test = mix.eval_name("domain")
    if domain_test is None:
        raise MixerError(f"{mix.path}: no domain test set to report the finetune on")
    val_files, val_sets = {}, [domain_test]
    if select_on == "val":
        val = selection_set(mix)
        val_files, val_sets = {val.name: HeldoutFile(val.path, len(val.samples))}, []
    if schedule not in FINETUNE_SCHEDULES:
        raise UsageError(f"--schedule: {schedule!r} is not one of {', '.join(FINETUNE_SCHEDULES)}")
    floor = SCHEDULES[schedule].floor(lr, cfg.min_lr)
    spec = RunSpec(kind=kind, run_dir=run_dir, mix=mix, model=pmeta["model"], steps=steps, global_batch=batch,
                   micro_batch=micro, lr=lr, min_lr=floor, warmup_steps=warmup, weight_decay=wd, schedule=schedule,
                   schedule_tokens=None, decay_fraction=cfg.decay_fraction, save_interval=every, val_sets=val_sets,
                   val_max_samples=None, patience=cfg.patience, seed=cfg.seed, machine=machine, init_from=ckpt,
                   parent=parent,
                   resume=resume, val_files=val_files)
    job = tr.plan(spec)
    parent_tokens = tr.step_of(ckpt) * tr.tokens_per_step(parent)
    meta = {"format": RUN_FORMAT, "name": run_dir.name, "kind": kind, "trainer": name, "model": pmeta["model"],
            "model_params": pmeta.get("model_params"), **_mix_meta(mix), "tokens": spec.tokens,
            "pretrain_tokens": parent_tokens,
            "parent": str(parent), "parent_checkpoint": str(ckpt), "select_on": select_on,
            "hparams": {"lr": lr, "reference_lr": ref, "lr_ratio": lr / ref if ref else None, "warmup": warmup,
                        "batch_size": batch, "schedule": schedule, "min_lr": floor,
                        "weight_decay": wd, "patience": cfg.patience, "eval_every": every, "steps": steps,
                        **{k: v for k, v in {"decay_fraction": cfg.decay_fraction}.items()
                           if k in SCHEDULES[schedule].records},
                        **({"warmup_capped": warmup_capped} if warmup_capped else {})},
            "best": None, "status": "planned", "mixer_version": __version__}
    return RunPlan(spec, job, meta, tr)


def selection_set(mix: MixFiles) -> SampleSet:
    """The domain validation split the mix holds, which a finetune is early-stopped and chosen
    on, or a one-line error saying how to get one."""
    got = sample_set(mix, SELECTION)
    if got is not None:
        return got
    test = "or pass --select-on test (the paper's protocol: select and report on the test split)"
    if not has_sample_sets(mix):
        raise MixerError(f"{mix.path}: built by an older mixer, the mix holds no domain validation split to select "
                         f"the finetune on; rebuild it (the same mixer build command) into a new folder, {test}")
    raise MixerError(f"{mix.path}: holds no domain validation split to select the finetune on (its domain store had "
                     "none when the mix was built: stores made before train/val/test splits hold train/test only); "
                     f"re-tokenize the domain and rebuild, {test}")


MIN_EVALUATIONS = 4  # early stopping needs a few evaluations to stop at


def _eval_interval(mix: MixFiles, batch: int, steps: int) -> int:
    """Once per domain epoch (the paper's finetuning), but a run of a few epochs or less (a
    post-training stage sees its data once) is evaluated 10 times, or early stopping would
    have nothing to choose from."""
    every = _steps_per_epoch(mix, batch)
    return every if steps // every >= MIN_EVALUATIONS else max(1, steps // 10)


def _steps_per_epoch(mix: MixFiles, batch: int) -> int:
    """Optimizer steps per epoch of the domain data (the paper evaluates once per epoch)."""
    src = mix.source("domain")
    starts = (src or {}).get("epoch_start_samples") or []
    if not src or len(starts) < 2 or not int(src["samples"]):
        return max(1, mix.samples // batch)
    per_epoch = (starts[1] - starts[0]) * mix.samples / int(src["samples"])  # domain samples -> mix samples
    return max(1, round(per_epoch / batch))


def _check_tokenizer(mix: MixFiles, parent: Path, pmeta: dict) -> None:
    """The finetune mix and the parent's pretraining mix share one tokenizer (the model's own
    vocabulary is the trainer's check)."""
    try:
        parent_mix = MixFiles.open(run_path(parent, pmeta["mix"]))
    except MixerError:
        return  # the parent's mix is gone; the trainer's vocabulary check is all we can do
    a, b = mix.tokenizer.get("sha256"), parent_mix.tokenizer.get("sha256")
    if a and b and a != b:
        raise MixerError(f"{mix.path}: tokenized with {mix.tokenizer.get('name')} ({a[:12]}) but the parent was "
                         f"pretrained on {parent_mix.tokenizer.get('name')} ({b[:12]}); re-tokenize with one tokenizer")


# -- running ----------------------------------------------------------------------------


def _best(rows: list[Eval], on: str) -> dict | None:
    """The winner on split `on`, with the test loss it is reported by."""
    b = best_eval(rows, on)
    return ({"checkpoint": b.checkpoint, "selected_on": on, "domain_val_loss": b.domain_val_loss,
             "domain_test_loss": b.domain_test_loss} if b else None)


def execute(plan: RunPlan, echo: bool = False, evaluate: bool = True, eval_samples: int | None = None) -> dict:
    """Train (resuming an unfinished run), evaluate every checkpoint (unless `evaluate` is False:
    a later `mixer eval RUN` does it and records the winner), record the early-stopping winner
    and where the command's time went; run.json says planned -> running -> done (or failed)."""
    run_dir = plan.run_dir
    t0 = time.perf_counter()
    run_dir.mkdir(parents=True, exist_ok=True)
    meta = dict(plan.meta)
    if meta.get("model_params") is None:
        meta["model_params"] = plan.job.model_params()
    meta["status"] = "running"
    write_run_meta(run_dir, meta)
    started = time.time()
    try:
        plan.trainer.launch(plan.job, echo=echo)
    except MixerError:
        meta["status"] = "failed"
        write_run_meta(run_dir, meta)
        raise
    trained = time.perf_counter()
    if evaluate:
        rows = evaluate_run(run_dir, max_samples=eval_samples, threads=plan.spec.machine.threads)
        meta["best"] = _best(rows, meta.get("select_on") or "test") if meta["kind"] != "pretrain" else None
    meta["evaluated"] = evaluate
    timing = _trainer_timing(plan.trainer, run_dir, started)
    end = time.perf_counter()
    meta["time"] = breakdown(timing, trained - t0, end - trained if evaluate else None, end - t0)
    if timing and timing.get("environment"):
        meta["environment"] = timing["environment"]
    if timing and timing.get("tokens"):
        meta["throughput"] = throughput(int(timing["tokens"]), float(timing["train_steps"]),
                                        timing.get("flops_per_token"), timing.get("device"),
                                        int(timing.get("devices") or 1), timing.get("precision"))
    meta["status"] = "done"
    write_run_meta(run_dir, meta)
    return meta


def _trainer_timing(trainer: Trainer, run_dir: Path, since: float) -> dict | None:
    """The trainer's account of its launch (an optional protocol method), if it is this launch's."""
    get = getattr(trainer, "timing", None)
    got = get(run_dir) if get is not None else None
    return got if got and float(got.get("finished") or 0) >= since else None


def record_best(run_dir: Path) -> dict:
    """After `mixer eval` of a run trained with --no-eval: its early-stopping winner (finetunes)
    in run.json, and for a grid folder the grid's winner; run.json as written."""
    run_dir = Path(run_dir)
    meta = read_run_meta(run_dir)
    hp = meta.get("hparams") or {}
    on = meta.get("select_on") or "test"
    if "grid" in hp:
        points = hp.get("points") or []
        meta["best"], bests = grid_winner(run_dir, [p["run"] for p in points], on)
        for p in points:
            p["best"] = bests[p["run"]]
    elif meta.get("kind") != "pretrain":
        meta["best"] = _best(read_evals(run_dir), on)
    meta["evaluated"] = True
    write_run_meta(run_dir, meta)
    return meta


# -- grids ------------------------------------------------------------------------------


def grid_winner(out: Path, names: list[str], on: str) -> tuple[dict | None, dict[str, dict | None]]:
    """A grid's winner (`{"run", "checkpoint", ...}`: the lowest loss on split `on` over every
    checkpoint of every grid point) and each grid point's own best, from their evals.jsonl."""
    rows = {n: read_evals(out / n) for n in names}
    winners = {n: b for n, b in ((n, best_eval(r, on)) for n, r in rows.items()) if b}
    best = best_eval(winners.values(), on)
    where = next((n for n, b in winners.items() if b is best), None)
    return ({"run": where, **_best([best], on)} if best else None), {n: _best(r, on) for n, r in rows.items()}


def parse_grid(specs: list[str]) -> dict[str, list]:
    """['lr=1e-5,4e-5', 'warmup=50,100'] -> {'lr': [1e-05, 4e-05], 'warmup': [50, 100]}."""
    grid: dict[str, list] = {}
    for spec in specs:
        key, sep, values = spec.partition("=")
        if not sep or key not in GRID_KEYS or not values:
            raise UsageError(f"--grid {spec!r}: expected KEY=V1,V2,... with KEY one of {', '.join(GRID_KEYS)}")
        try:
            grid[key] = [GRID_KEYS[key](v) for v in values.split(",")]
        except ValueError:
            raise UsageError(f"--grid {spec!r}: {key} values must be {GRID_KEYS[key].__name__}s") from None
    return grid


def parse_values(text: str | None, kind: type, flag: str) -> list | None:
    """'1e-5,4e-5' -> [1e-05, 4e-05] for a flag that takes one value or a grid of them."""
    if text is None:
        return None
    try:
        values = [kind(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"{flag} {text!r}: expected {kind.__name__}s separated by commas") from None
    if not values:
        raise UsageError(f"{flag}: no values")
    return values


def finetune_axes(defaults: dict, lr: list[float] | None = None, lr_ratio: list[float] | None = None,
                  warmup: list[int] | None = None, grid: dict[str, list] | None = None) -> dict[str, list]:
    """The finetuning grid: learning rates as multiples of the parent's rate (default the
    paper's three ratios, PAPER_LR_RATIOS) or absolute (--lr), times warmups (default the
    preset's: the paper's 50, 100, 200 steps for the OLMo presets). A single point is a plain run."""
    grid = dict(grid or {})
    for key, flag in (("lr", lr), ("lr_ratio", lr_ratio), ("warmup", warmup)):
        if key in grid and flag is not None:
            raise UsageError(f"--{key.replace('_', '-')} and --grid {key}=...: give the values once")
    if lr is not None and lr_ratio is not None or "lr" in grid and "lr_ratio" in grid:
        raise UsageError("--lr and --lr-ratio: give the rates or their ratios to the parent's, not both")
    rate = {k: grid.pop(k) for k in ("lr", "lr_ratio") if k in grid}
    if not rate:
        rate = {"lr": lr} if lr is not None else {"lr_ratio": lr_ratio or list(PAPER_LR_RATIOS)}
    default_warmup = defaults.get("warmup", 0)
    warmups = grid.pop("warmup", None) or warmup or [
        int(w) for w in (default_warmup if isinstance(default_warmup, (list, tuple)) else [default_warmup])]
    return rate | {"warmup": warmups} | grid


def is_grid(axes: dict[str, list]) -> bool:
    return any(len(v) > 1 for v in axes.values())


def grid_points(grid: dict[str, list]) -> list[tuple[str, dict]]:
    """(sub-run folder name, overrides) for every combination, e.g. 'lr_ratio=0.102252,warmup=100'."""
    keys = list(grid)
    show = lambda v: f"{v:g}" if isinstance(v, float) else str(v)  # noqa: E731
    return [(",".join(f"{k}={show(v)}" for k, v in zip(keys, combo)), dict(zip(keys, combo)))
            for combo in itertools.product(*(grid[k] for k in keys))]


def run_grid(kind: RunKind, out: Path, grid: dict[str, list], make_plan, echo: bool = False,
             eval_samples: int | None = None, evaluate: bool = True) -> dict:
    """Every grid point as a full sub-run, then RUN/run.json: the grid that ran, each point's
    best checkpoint, and `best` naming the winner: the lowest loss on the split the runs
    select on (the domain validation split unless --select-on test) over every checkpoint of
    every grid point, reported with its test loss."""
    out = out.expanduser().resolve()
    results = []
    for name, overrides in grid_points(grid):
        sub = out / name
        done = (sub / "run.json").is_file() and read_run_meta(sub).get("status") == "done"
        meta = read_run_meta(sub) if done else execute(make_plan(sub, overrides), echo=echo, eval_samples=eval_samples,
                                                        evaluate=evaluate)
        results.append((name, meta))
    first = results[0][1]
    on = first.get("select_on") or "test"
    best, bests = grid_winner(out, [n for n, _ in results], on)
    points = [{"run": n, "lr": m["hparams"]["lr"], "lr_ratio": m["hparams"].get("lr_ratio"),
               "warmup": m["hparams"]["warmup"], "best": bests[n]} for n, m in results]
    own = ("hparams", "best", "status", "name", "time", "throughput", "environment")  # each point's, not the grid's
    root = {**{k: first[k] for k in first if k not in own},
            "name": out.name, "kind": kind,
            "hparams": {"grid": grid, "reference_lr": first["hparams"].get("reference_lr"), "points": points},
            "best": best, "status": "done", "evaluated": all(m.get("evaluated", True) for _, m in results)}
    write_run_meta(out, root)
    return root


@dataclass
class FinetuneGrid:
    """A finetune (one point) or a grid of them under `out`, planned but not run."""
    kind: RunKind
    out: Path
    axes: dict[str, list]
    make: Callable[[Path, dict], RunPlan]  # (a point's folder, its overrides) -> its plan

    @property
    def is_grid(self) -> bool:
        return is_grid(self.axes)

    def settings(self) -> list[tuple[Path, dict]]:
        """(folder, overrides) of every point: OUT itself for a single finetune, OUT/<point> in a grid."""
        if not self.is_grid:
            return [(self.out, {k: v[0] for k, v in self.axes.items()})]
        return [(self.out / name, o) for name, o in grid_points(self.axes)]

    def points(self) -> list[tuple[Path, RunPlan]]:
        """(folder, plan) of every point."""
        return [(where, self.make(where, o)) for where, o in self.settings()]

    def first(self) -> RunPlan:
        """The first point's plan (a single finetune's only one), without planning the others."""
        return self.make(*self.settings()[0])

    def write_sbatch(self, argv: list[str], job: dict) -> Path:
        """OUT/sbatch.sh: one job that runs the whole command, grid and all (its first point
        plans the machine); its path."""
        return self.first().write_sbatch(argv, job, self.out.expanduser().resolve())

    def run(self, echo: bool = False, eval_samples: int | None = None, evaluate: bool = True) -> dict:
        """Train and evaluate every point (resuming), then the grid's run.json; run.json as written."""
        if not self.is_grid:
            return self.first().run(echo=echo, eval_samples=eval_samples, evaluate=evaluate)
        return run_grid(self.kind, self.out, self.axes, self.make, echo=echo, eval_samples=eval_samples,
                        evaluate=evaluate)


def plan_finetune_grid(kind: RunKind, mix: Path, out: Path, parent: Path, cfg: FinetuneConfig,
                       lr: str | None = None, lr_ratio: str | None = None, warmup: str | None = None,
                       grid: Sequence[str] = (), dry_run: bool = False) -> FinetuneGrid:
    """`mixer train finetune|replay`: the grid its flags ask for (comma-separated `lr`,
    `lr_ratio`, `warmup` and `key=v1,v2` axes; the paper's rates and the preset's warmups by
    default, warmups capped to the run's length unless given), each point planned by
    plan_finetune from `cfg` with the point's values (`cfg`'s own lr, lr_ratio and warmup are
    the grid's: leave them None)."""
    if (cfg.lr, cfg.lr_ratio, cfg.warmup) != (None, None, None):
        raise UsageError("a finetune grid takes its rates and warmups as lr=, lr_ratio= and warmup= (comma-separated), "
                         "not in its FinetuneConfig")
    pmeta = read_run_meta(parent)
    defaults = trainer_of(pmeta, parent).defaults(pmeta.get("model") or "", "finetune")
    grid_axes = parse_grid(list(grid))
    axes = finetune_axes(defaults, parse_values(lr, float, "--lr"), parse_values(lr_ratio, float, "--lr-ratio"),
                         parse_values(warmup, int, "--warmup"), grid_axes)
    capped = None
    if warmup is None and "warmup" not in grid_axes:  # the preset's warmups: capped to the run's length
        steps = run_steps(mix, cfg.batch or defaults["batch"], cfg.tokens)
        axes["warmup"], capped = cap_warmups(axes["warmup"], steps)
    return FinetuneGrid(kind, Path(out), axes, lambda run_out, overrides: plan_finetune(
        kind, mix, run_out, parent, replace(cfg, **overrides), dry_run=dry_run, warmup_capped=capped))
