"""`mixer train`: a mix (and for finetuning a parent run) -> RUN/ with config.yaml, run.json,
LitGPT's checkpoints and logs, and evals.jsonl (docs/formats.md, Run).

Pretraining runs `litgpt pretrain --config RUN/config.yaml` as is. Finetune and replay runs
start from the parent's checkpoint converted with LitGPT's convert_pretrained_checkpoint,
save and validate once per epoch of the domain data, and go through
trainer_adapters.litgpt.launch, which adds early stopping (and WSD) to the same config.
"""

from __future__ import annotations

import itertools
import math
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from mixer import __version__
from mixer.formats.atomic import write_json
from mixer.errors import MixerError, UsageError
from mixer.training.evaluate import best_checkpoint, evaluate_run, read_run_meta

RUN_FORMAT = "mixer-run/1"
GRID_KEYS = {"lr": float, "warmup": int, "weight_decay": float, "min_lr": float}


@dataclass
class RunPlan:
    run_dir: Path
    settings: object  # trainer_adapters.litgpt.config.TrainSettings
    meta: dict
    hooks: dict = field(default_factory=dict)
    convert: tuple[Path, Path] | None = None  # parent checkpoint -> converted copy

    def config_yaml(self) -> str:
        from trainer_adapters.litgpt.config import dump, litgpt_config

        return dump(litgpt_config(self.settings))


# -- planning ---------------------------------------------------------------------------


def _open_mix(path: Path):
    from trainer_adapters.litgpt.mixfiles import MixFileError, MixFiles

    try:
        return MixFiles.open(path)
    except MixFileError as e:
        raise MixerError(str(e)) from None


def _steps(mix, global_batch: int, tokens: int | None) -> int:
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


def _batches(batch: int, micro: int, devices: int) -> tuple[int, int]:
    micro = min(micro, batch // devices) or 1
    if batch % devices or (batch // devices) % micro:
        raise UsageError(f"--batch-size {batch} must split evenly over {devices} devices and micro-batches of {micro}")
    return batch, micro


def _model_params(model_config: dict, tied: bool) -> int:
    import torch
    from litgpt.model import GPT, Config

    with torch.device("meta"):
        model = GPT(Config(**model_config))
    n = sum(p.numel() for p in model.parameters())
    return n - (model.lm_head.weight.numel() if tied else 0)


def _run_dir(out: Path, dry_run: bool) -> tuple[Path, Path | None]:
    """(RUN, checkpoint to resume from). A finished run is never overwritten."""
    out = out.expanduser().resolve()
    meta_file = out / "run.json"
    if meta_file.is_file():
        meta = read_run_meta(out)
        if meta.get("status") == "done" and not dry_run:
            raise MixerError(f"{out}: already trained (status done); choose another --out")
        latest = max((out / "out").glob("step-*/lit_model.pth"), key=lambda p: int(p.parent.name.split("-")[1]),
                     default=None)
        return out, latest
    if out.exists() and any(out.iterdir()) and not dry_run:
        raise MixerError(f"{out}: exists and is not a run; choose another --out")
    return out, None


def _mix_meta(mix) -> dict:
    frac = mix.manifest.get("fraction") or {}
    requested, achieved = frac.get("requested"), frac.get("achieved")
    return {"mix": str(mix.path), "domain": mix.manifest.get("domain"), "general": mix.manifest.get("general"),
            "fraction": requested if requested is not None else achieved, "window": frac.get("window", [0.0, 1.0]),
            "seed": mix.manifest.get("seed", 0)}


def plan_pretrain(mix_path: Path, out: Path, model: str, tokens: int | None = None, lr: float | None = None,
                  min_lr: float | None = None, warmup: int | None = None, batch: int | None = None,
                  micro: int | None = None, checkpoints: int = 10, save_every: int | None = None,
                  schedule_tokens: int | None = None, seed: int = 0, machine=None, val_samples: int = 128,
                  dry_run: bool = False) -> RunPlan:
    from trainer_adapters.litgpt.config import Machine, TrainSettings
    from trainer_adapters.litgpt.presets import get_preset

    preset = get_preset(model)
    mix = _open_mix(mix_path)
    machine = machine or Machine.detect()
    p = preset.pretrain
    cfg = preset.model_config(mix.vocab_size, mix.seq_len)
    batch, micro = _batches(batch or p["batch"], micro or p["micro_batch"], machine.devices)
    steps = _steps(mix, batch, tokens)
    run_dir, resume = _run_dir(out, dry_run)
    lr = lr if lr is not None else p["lr"]
    min_lr = min_lr if min_lr is not None else (p["min_lr"] if lr == p["lr"] else lr / 10)
    warmup = warmup if warmup is not None else max(1, round(p["warmup_fraction"] * steps))
    save = save_every or max(1, steps // max(1, checkpoints))
    max_tokens = steps * batch * mix.seq_len
    s = TrainSettings(
        out_dir=run_dir / "out", mix=mix.path, model_name=cfg["name"], model_config=cfg, seq_len=mix.seq_len,
        max_tokens=max_tokens, global_batch=batch, micro_batch=micro, lr=lr, min_lr=min_lr, warmup_steps=warmup,
        weight_decay=p["weight_decay"], tie_embeddings=p["tie_embeddings"], save_interval=save, val_sets=None,
        val_max_samples=val_samples, eval_max_iters=_eval_iters(mix, None, val_samples, micro),
        initial_validation=False, initial_checkpoint_dir=None, resume=resume, seed=seed, machine=machine)
    hooks = {}
    if schedule_tokens:
        iter_tokens = micro * mix.seq_len
        hooks["schedule"] = {"kind": "cosine", "horizon_iters": (schedule_tokens // machine.devices) // iter_tokens}
    meta = {"format": RUN_FORMAT, "name": run_dir.name, "kind": "pretrain", "model": preset.name,
            "model_params": None, **_mix_meta(mix), "tokens": max_tokens, "pretrain_tokens": max_tokens,
            "parent": None, "parent_checkpoint": None,
            "hparams": {"lr": lr, "min_lr": min_lr, "warmup": warmup, "batch_size": batch, "schedule": "cosine",
                        "schedule_tokens": schedule_tokens or max_tokens, "weight_decay": p["weight_decay"],
                        "steps": steps, "save_interval": save},
            "best": None, "status": "planned", "mixer_version": __version__}
    return RunPlan(run_dir, s, meta, hooks)


def _eval_iters(mix, names: list[str] | None, cap: int | None, micro: int) -> int:
    sets = mix.eval_sets
    n = sum(min(int(sets[k]["samples"]), cap or 10**12) for k in (names if names is not None else sets))
    return max(1, math.ceil(n / micro))


def _parent_checkpoint(parent: Path, name: str | None) -> Path:
    out = parent / "out"
    if name:
        ckpt = out / name if (out / name).is_dir() else Path(name)
    elif (out / "final").is_dir():
        ckpt = out / "final"
    else:
        steps = sorted(out.glob("step-*"), key=lambda p: int(p.name.split("-")[1]))
        if not steps:
            raise MixerError(f"{out}: the parent run has no checkpoints")
        ckpt = steps[-1]
    for f in ("lit_model.pth", "model_config.yaml"):
        if not (ckpt / f).is_file():
            raise MixerError(f"{ckpt / f}: missing; choose another --checkpoint of {parent}")
    return ckpt.resolve()


def plan_finetune(kind: str, mix_path: Path, out: Path, parent: Path, checkpoint: str | None = None,
                  lr: float | None = None, warmup: int | None = None, schedule: str = "constant",
                  min_lr: float | None = None, decay_fraction: float = 0.2, weight_decay: float | None = None,
                  batch: int | None = None, micro: int | None = None, tokens: int | None = None, patience: int = 2,
                  eval_every: int | None = None, seed: int = 0, machine=None, dry_run: bool = False) -> RunPlan:
    import yaml
    from trainer_adapters.litgpt.config import Machine, TrainSettings
    from trainer_adapters.litgpt.presets import get_preset

    parent = parent.expanduser().resolve()
    pmeta = read_run_meta(parent)
    mix = _open_mix(mix_path)
    machine = machine or Machine.detect()
    preset = get_preset(pmeta.get("model") or "")
    ckpt = _parent_checkpoint(parent, checkpoint)
    cfg = yaml.safe_load((ckpt / "model_config.yaml").read_text())
    _check_tokenizer(mix, pmeta, cfg)
    if mix.seq_len > int(cfg["block_size"]):
        raise MixerError(f"{mix.path}: samples of {mix.seq_len} tokens exceed the parent model's context "
                         f"{cfg['block_size']}")
    f = preset.finetune
    batch, micro = _batches(batch or f["batch"], micro or f["micro_batch"], machine.devices)
    steps = _steps(mix, batch, tokens)
    run_dir, resume = _run_dir(out, dry_run)
    lr = lr if lr is not None else f["lr"]
    warmup = warmup if warmup is not None else f["warmup"]
    wd = weight_decay if weight_decay is not None else f["weight_decay"]
    every = eval_every or _steps_per_epoch(mix, batch)
    domain_test = mix.eval_name("domain")
    if domain_test is None:
        raise MixerError(f"{mix.path}: no domain test set; early stopping needs one")
    if schedule == "constant":
        floor = lr  # LitGPT's cosine from lr to lr: constant after warmup, no hook needed
    elif schedule == "wsd":
        floor = min_lr if min_lr is not None else lr / 10
    else:
        raise UsageError(f"--schedule: {schedule!r} is not constant or wsd")
    max_tokens = steps * batch * mix.seq_len
    converted = parent / "converted" / ckpt.name
    s = TrainSettings(
        out_dir=run_dir / "out", mix=mix.path, model_name=cfg["name"], model_config=cfg, seq_len=mix.seq_len,
        max_tokens=max_tokens, global_batch=batch, micro_batch=micro, lr=lr, min_lr=floor, warmup_steps=warmup,
        weight_decay=wd, tie_embeddings=f["tie_embeddings"], save_interval=every, val_sets=[domain_test],
        val_max_samples=None, eval_max_iters=_eval_iters(mix, [domain_test], None, micro), initial_validation=True,
        initial_checkpoint_dir=converted, resume=resume, seed=seed, machine=machine)
    hooks: dict = {}
    if patience > 0:
        hooks["early_stopping"] = {"patience": patience}
    if schedule == "wsd":
        hooks["schedule"] = {"kind": "wsd", "decay_fraction": decay_fraction}
    pconf = yaml.safe_load((parent / "config.yaml").read_text())["train"]
    parent_tokens = _checkpoint_step(ckpt) * int(pconf["global_batch_size"]) * int(pconf["max_seq_length"])
    meta = {"format": RUN_FORMAT, "name": run_dir.name, "kind": kind, "model": preset.name,
            "model_params": pmeta.get("model_params"), **_mix_meta(mix), "tokens": max_tokens,
            "pretrain_tokens": parent_tokens,
            "parent": str(parent), "parent_checkpoint": str(ckpt),
            "hparams": {"lr": lr, "warmup": warmup, "batch_size": batch, "schedule": schedule, "min_lr": floor,
                        "weight_decay": wd, "patience": patience, "eval_every": every, "steps": steps,
                        **({"decay_fraction": decay_fraction} if schedule == "wsd" else {})},
            "best": None, "status": "planned", "mixer_version": __version__}
    return RunPlan(run_dir, s, meta, hooks, convert=(ckpt, converted))


def _steps_per_epoch(mix, batch: int) -> int:
    """Optimizer steps per epoch of the domain data (the paper evaluates once per epoch)."""
    src = mix.source("domain")
    starts = (src or {}).get("epoch_start_samples") or []
    if not src or len(starts) < 2 or not int(src["samples"]):
        return max(1, mix.samples // batch)
    per_epoch = (starts[1] - starts[0]) * mix.samples / int(src["samples"])  # domain samples -> mix samples
    return max(1, round(per_epoch / batch))


def _check_tokenizer(mix, pmeta: dict, model_cfg: dict) -> None:
    vocab = int(model_cfg.get("padded_vocab_size") or model_cfg["vocab_size"])
    if mix.vocab_size > vocab:
        raise MixerError(f"{mix.path}: tokenizer has {mix.vocab_size} ids but the parent model only {vocab}")
    try:
        parent_mix = _open_mix(Path(pmeta["mix"]))
    except MixerError:
        return  # the parent's mix is gone; the vocabulary check above is all we can do
    a, b = mix.tokenizer.get("sha256"), parent_mix.tokenizer.get("sha256")
    if a and b and a != b:
        raise MixerError(f"{mix.path}: tokenized with {mix.tokenizer.get('name')} ({a[:12]}) but the parent was "
                         f"pretrained on {parent_mix.tokenizer.get('name')} ({b[:12]}); re-tokenize with one tokenizer")


def _checkpoint_step(ckpt: Path) -> int:
    import torch

    try:
        state = torch.load(ckpt / "lit_model.pth", map_location="cpu", mmap=True, weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for a damaged file
        raise MixerError(f"{ckpt / 'lit_model.pth'}: cannot read the checkpoint ({type(e).__name__})") from None
    if "model" not in state:
        raise MixerError(f"{ckpt}: not a LitGPT pretraining checkpoint (no optimizer step count); pass a step-*/final "
                         "folder of a mixer run")
    return int(state.get("step_count", 0))


# -- running ----------------------------------------------------------------------------


def convert_checkpoint(src: Path, dest: Path) -> None:
    """LitGPT's convert_pretrained_checkpoint into a temporary folder, then renamed: done once per
    parent checkpoint and shared by every finetune (and grid point) that starts from it."""
    if (dest / "lit_model.pth").is_file():
        return
    from litgpt.scripts.convert_pretrained_checkpoint import convert_pretrained_checkpoint

    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")  # concurrent finetunes of one parent each convert
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        convert_pretrained_checkpoint(src, tmp)
    except Exception as e:  # noqa: BLE001
        shutil.rmtree(tmp, ignore_errors=True)
        raise MixerError(f"{src}: LitGPT could not convert the checkpoint ({type(e).__name__}: {e})") from None
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        tmp.rename(dest)
    except OSError:  # another finetune renamed its identical copy first
        shutil.rmtree(tmp, ignore_errors=True)


def execute(plan: RunPlan, echo: bool = False, evaluate: bool = True, eval_samples: int | None = None) -> dict:
    from trainer_adapters.litgpt.logs import last_error_line, merge_metrics, run_logged

    run_dir, s = plan.run_dir, plan.settings
    run_dir.mkdir(parents=True, exist_ok=True)
    if plan.convert:
        convert_checkpoint(*plan.convert)
    meta = dict(plan.meta)
    if meta.get("model_params") is None:
        meta["model_params"] = _model_params(s.model_config, s.tie_embeddings)
    (run_dir / "config.yaml").write_text(plan.config_yaml())
    meta["status"] = "running"
    write_json(run_dir / "run.json", meta)
    if plan.hooks:
        write_json(run_dir / "launch.json", plan.hooks)
        cmd = [sys.executable, "-m", "trainer_adapters.litgpt.launch", str(run_dir / "config.yaml"),
               str(run_dir / "launch.json")]
    else:
        cmd = [_litgpt(), "pretrain", "--config", str(run_dir / "config.yaml")]
    log = run_dir / "train.log"
    rc = run_logged(cmd, log, s.machine.env(), echo=echo)
    if rc != 0:
        meta["status"] = "failed"
        write_json(run_dir / "run.json", meta)
        raise MixerError(f"litgpt failed: {last_error_line(log)} (log: {log})")
    merge_metrics(run_dir / "out", run_dir / "metrics.csv")
    if evaluate:
        rows = evaluate_run(run_dir, max_samples=eval_samples, threads=s.machine.threads)
        meta["best"] = best_checkpoint(rows) if meta["kind"] != "pretrain" else None
    meta["status"] = "done"
    write_json(run_dir / "run.json", meta)
    return meta


def _litgpt() -> str:
    exe = Path(sys.executable).parent / "litgpt"
    found = str(exe) if exe.exists() else shutil.which("litgpt")
    if not found:
        raise MixerError("litgpt is not installed (pip install 'mixer[litgpt]')")
    return found


# -- grids ------------------------------------------------------------------------------


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


def grid_points(grid: dict[str, list]) -> list[tuple[str, dict]]:
    """(sub-run folder name, overrides) for every combination, e.g. 'lr=4e-05,warmup=100'."""
    keys = list(grid)
    return [(",".join(f"{k}={v!r}" for k, v in zip(keys, combo)), dict(zip(keys, combo)))
            for combo in itertools.product(*(grid[k] for k in keys))]


def run_grid(kind: str, out: Path, grid: dict[str, list], make_plan, echo: bool = False,
             eval_samples: int | None = None) -> dict:
    """Every grid point as a full sub-run, then RUN/run.json with `best` naming the winner."""
    out = out.expanduser().resolve()
    results = []
    for name, overrides in grid_points(grid):
        sub = out / name
        done = (sub / "run.json").is_file() and read_run_meta(sub).get("status") == "done"
        meta = read_run_meta(sub) if done else execute(make_plan(sub, overrides), echo=echo, eval_samples=eval_samples)
        results.append((name, meta))
    first = results[0][1]
    scored = [(n, m["best"]) for n, m in results if m.get("best")]
    best = min(scored, key=lambda x: x[1]["domain_test_loss"]) if scored else None
    root = {**{k: first[k] for k in first if k not in ("hparams", "best", "status", "name")},
            "name": out.name, "kind": kind, "hparams": {"grid": grid},
            "best": {"run": best[0], **best[1]} if best else None, "status": "done"}
    write_json(out / "run.json", root)
    return root
