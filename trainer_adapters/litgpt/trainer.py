"""LitGPT as a mixer trainer (`mixer.training.trainer.Trainer`), registered as `litgpt`.

A RunSpec becomes one complete `litgpt pretrain` YAML (RUN/config.yaml; config.py) and the
hooks launch.py adds to LitGPT's loop (RUN/launch.json: schedule, early stopping, DDP on CPU
ranks). RUN/launch.sh starts the training processes (cluster.py): launch.py once on one
node, one srun task per device on several. Finetunes start from the parent's checkpoint
converted with LitGPT's convert_pretrained_checkpoint, and validate (and save) at every
save_interval.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from mixer.errors import MixerError
from mixer.formats.atomic import atomic_open, write_json
from mixer.formats.mix import MixFiles
from mixer.training.progress import StepLine
from mixer.training.trainer import EvalModel, RunSpec

from . import checkpoints as ckpts
from .cluster import SBATCH, SCRIPT, check_allocation, launch_script, sbatch_script
from .config import Machine, TrainSettings, cpu_threads, dump, litgpt_config
from .launch import HOOKS, TIMING
from .logs import last_error_line, merge_metrics, run_logged, step_of_line, train_table
from .presets import get_preset

CONFIG = "config.yaml"
# LitGPT alone cannot apply launch.json (its schedule is linear warmup then cosine over the
# whole run, with no early stopping): the file says so where someone would reuse it.
CONFIG_HEAD = """\
# Written by mixer train. To reproduce this run outside mixer, run launch.sh beside this file:
# it starts LitGPT through mixer's launcher, which adds what launch.json holds (the learning-rate
# schedule's horizon or WSD decay, early stopping, CPU ranks). `litgpt pretrain --config
# config.yaml` alone follows LitGPT's own schedule (linear warmup, then cosine to min_lr over
# max_tokens) and ignores launch.json.
"""


@dataclass
class LitGPTJob:
    run_dir: Path
    settings: TrainSettings
    hooks: dict  # launch.json: what launch.py adds to `litgpt pretrain` (empty: nothing)
    convert: tuple[Path, Path] | None = None  # parent checkpoint -> its converted copy

    def config_text(self) -> str:
        return CONFIG_HEAD + dump(litgpt_config(self.settings))

    def model_params(self) -> int:
        import torch
        from litgpt.model import GPT, Config

        with torch.device("meta"):
            model = GPT(Config(**self.settings.model_config))
        n = sum(p.numel() for p in model.parameters())
        return n - (model.lm_head.weight.numel() if self.settings.tie_embeddings else 0)


def _eval_iters(mix: MixFiles, names: list[str] | None, cap: int | None, micro: int, files: dict) -> int:
    """LitGPT's eval.max_iters that covers the chosen held-out sets exactly once."""
    sets = mix.eval_sets
    counts = [int(sets[k]["samples"]) for k in (names if names is not None else sets)]
    counts += [f.samples for f in files.values()]
    n = sum(min(c, cap or 10**12) for c in counts)
    return max(1, math.ceil(n / micro))


class LitGPT:
    def machine(self, precision: str | None, devices: int | None, threads: int | None,
                nodes: int | None = None) -> Machine:
        return Machine.detect(precision, devices, threads, nodes)

    def defaults(self, model: str, kind: str) -> dict:
        preset = get_preset(model)
        return dict(preset.pretrain if kind == "pretrain" else preset.finetune)

    def plan(self, spec: RunSpec) -> LitGPTJob:
        preset, mix = get_preset(spec.model), spec.mix
        if spec.init_from is None:
            cfg = preset.model_config(mix.vocab_size, mix.seq_len)
            tie, converted = preset.pretrain["tie_embeddings"], None
        else:
            cfg = ckpts.model_config(spec.init_from)
            vocab = int(cfg.get("padded_vocab_size") or cfg["vocab_size"])
            if mix.vocab_size > vocab:
                raise MixerError(f"{mix.path}: tokenizer has {mix.vocab_size} ids but the parent model only {vocab}")
            if mix.seq_len > int(cfg["block_size"]):
                raise MixerError(f"{mix.path}: samples of {mix.seq_len} tokens exceed the parent model's context "
                                 f"{cfg['block_size']}")
            tie = preset.finetune["tie_embeddings"]
            parent = spec.parent or spec.init_from.parent.parent
            converted = parent / "converted" / spec.init_from.name
        hooks: dict = {}
        if spec.machine.strategy:
            hooks["strategy"] = spec.machine.strategy
        if spec.patience > 0:
            hooks["early_stopping"] = {"patience": spec.patience}
        if spec.schedule not in ("cosine", "constant"):  # any other schedule mixer defines: launch.py applies it
            hooks["schedule"] = {"kind": spec.schedule, "decay_fraction": spec.decay_fraction}
        elif spec.schedule == "cosine" and spec.schedule_tokens:
            # LitGPT counts its schedule in micro-batch iterations per rank.
            iter_tokens = spec.micro_batch * mix.seq_len
            hooks["schedule"] = {"kind": "cosine",
                                 "horizon_iters": (spec.schedule_tokens // spec.machine.ranks) // iter_tokens}
        s = TrainSettings(
            out_dir=spec.run_dir / "out", mix=mix.path, model_name=cfg["name"], model_config=cfg, seq_len=mix.seq_len,
            max_tokens=spec.tokens, global_batch=spec.global_batch, micro_batch=spec.micro_batch, lr=spec.lr,
            min_lr=spec.lr if spec.schedule == "constant" else spec.min_lr,  # cosine from lr to lr: constant
            warmup_steps=spec.warmup_steps, weight_decay=spec.weight_decay, tie_embeddings=tie,
            save_interval=spec.save_interval, val_sets=spec.val_sets, val_max_samples=spec.val_max_samples,
            val_files={k: str(f.path) for k, f in spec.val_files.items()},
            eval_max_iters=_eval_iters(mix, spec.val_sets, spec.val_max_samples, spec.micro_batch, spec.val_files),
            initial_validation=spec.init_from is not None, initial_checkpoint_dir=converted,
            resume=ckpts.resume_point(spec.run_dir) if spec.resume else None, seed=spec.seed, machine=spec.machine)
        return LitGPTJob(spec.run_dir, s, hooks, convert=(spec.init_from, converted) if converted else None)

    def launch(self, job: LitGPTJob, echo: bool = False) -> None:
        run_dir, machine = job.run_dir, job.settings.machine
        check_allocation(machine)
        if job.convert:
            ckpts.convert_checkpoint(*job.convert)
        config = run_dir / CONFIG
        config.write_text(job.config_text())
        write_json(run_dir / HOOKS, job.hooks)
        script = run_dir / SCRIPT
        script.write_text(launch_script(config, machine))
        log = run_dir / "train.log"
        s = job.settings
        per_step = s.global_batch * s.seq_len
        status = None if echo else StepLine(f"train {run_dir.name}", s.max_tokens // per_step, per_step)

        def on_line(line: str) -> None:
            if status is not None and (seen := step_of_line(line)) is not None:
                status.update(*seen)

        try:
            code = run_logged(["bash", str(script)], log, dict(os.environ), echo=echo, on_line=on_line)
        finally:
            if status is not None:
                status.close()
        if code != 0:
            raise MixerError(f"litgpt failed: {last_error_line(log)} (log: {log})")
        ckpts.drop_resume_states(run_dir)  # the run is finished: no resume will read them
        merge_metrics(run_dir / "out", run_dir / "metrics.csv")

    def sbatch_script(self, job: LitGPTJob, argv: list[str], slurm: dict[str, str], run_dir: Path) -> Path:
        """RUN/sbatch.sh: a Slurm job that runs `mixer <argv>` in an allocation of the job's
        nodes and devices (cluster.sbatch_script); `slurm` holds #SBATCH settings, `time` included."""
        slurm = dict(slurm)
        text = sbatch_script(argv, job.settings.machine, run_dir, slurm, time=slurm.pop("time", "24:00:00"))
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        path = run_dir / SBATCH
        with atomic_open(path, "w") as f:
            f.write(text)
        return path

    def checkpoints(self, run_dir: Path) -> list[Path]:
        return ckpts.checkpoints(run_dir)

    def step_of(self, ckpt: Path) -> int:
        return ckpts.step_of(ckpt)

    def tokens_per_step(self, run_dir: Path) -> int:
        train = self._config(run_dir)["train"]
        return int(train["global_batch_size"]) * int(train["max_seq_length"])

    def load_for_eval(self, run_dir: Path, ckpt: Path, device: str | None, threads: int | None) -> EvalModel:
        """On a GPU in the precision the run trained in (bf16 autocast for bf16 runs), in
        batches of the run's micro-batch, which fit beside the weights since training's did."""
        import torch

        from mixer.training.evaluate import mean_loss

        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if device == "cpu":
            torch.set_num_threads(cpu_threads(threads))
        cfg = self._config(run_dir)
        model, step = ckpts.load_checkpoint(ckpt, device)
        micro = int(cfg["train"]["micro_batch_size"])
        autocast = "bfloat16" if str(cfg.get("precision", "")).startswith("bf16") and device != "cpu" else None
        return EvalModel(step=step, loss=partial(mean_loss, model, batch_size=micro, device=device, autocast=autocast))

    def timing(self, run_dir: Path) -> dict | None:
        """The last launch's RUN/timing.jsonl line (launch.py: startup, compile, train_steps,
        validation, checkpoints, tokens, device), with the precision and LitGPT's count of
        model FLOPs per token."""
        f = Path(run_dir) / TIMING
        lines = f.read_text().splitlines() if f.is_file() else []
        if not lines:
            return None
        cfg = self._config(run_dir)
        return {**json.loads(lines[-1]), "precision": cfg.get("precision"),
                "flops_per_token": flops_per_token(cfg["model_config"], int(cfg["train"]["max_seq_length"]))}

    def train_log(self, run_dir: Path) -> dict[int, dict[str, float]]:
        return train_table(merge_metrics(Path(run_dir) / "out", Path(run_dir) / "metrics.csv"))

    @staticmethod
    def _config(run_dir: Path) -> dict:
        import yaml

        f = Path(run_dir) / CONFIG
        if not f.is_file():
            raise MixerError(f"{f}: missing; {run_dir} was not started by mixer train with LitGPT")
        return yaml.safe_load(f.read_text())


def flops_per_token(model_config: dict, seq_len: int) -> float:
    """Model FLOPs of a forward and backward pass per token, as LitGPT counts them for its
    throughput log: Lightning's `measure_flops` on a meta-device copy (nothing is computed)."""
    import torch
    from lightning.fabric.utilities.throughput import measure_flops
    from litgpt.model import GPT, Config
    from litgpt.utils import chunked_cross_entropy

    with torch.device("meta"):
        model = GPT(Config(**model_config))
        x = torch.randint(0, 1, (1, seq_len))
        flops = measure_flops(model, lambda: model(x), lambda y: chunked_cross_entropy(y, x, chunk_size=0))
    return flops / seq_len


TRAINER = LitGPT()
