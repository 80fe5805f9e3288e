"""One complete `litgpt pretrain` YAML per run: every setting explicit, every path absolute,
so the file alone re-runs the experiment (`litgpt pretrain --config RUN/config.yaml`)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from mixer.errors import UsageError

from .presets import ADAM


def cpu_threads(threads: int | None = None) -> int:
    """Torch threads on a CPU, for training and evaluation alike: `threads`, else half the cores.
    On a shared 2-core machine one thread ran a tiny model 5x faster than two (68 vs 370 ms per
    step), because spinning threads starve each other."""
    return threads or max(1, (os.cpu_count() or 2) // 2)


@dataclass(frozen=True)
class Machine:
    """What LitGPT must be told about the hardware: `devices` per node (LitGPT's `devices`) on
    `nodes` nodes, so `ranks` data-parallel processes in all."""

    precision: str
    devices: int
    compile: bool
    threads: int | None = None  # CPU threads for torch; None leaves torch's default
    nodes: int = 1
    cuda: bool = False

    @classmethod
    def detect(cls, precision: str | None = None, devices: int | None = None,
               threads: int | None = None, nodes: int | None = None) -> "Machine":
        import torch

        for flag, n in (("--devices", devices), ("--num-nodes", nodes)):
            if n is not None and n < 1:
                raise UsageError(f"{flag} {n}: must be at least 1")
        cuda = torch.cuda.is_available()
        if not cuda:
            # CPU: bf16 is slow or unsupported and torch.compile costs more than it saves on tiny models.
            return cls(precision or "32-true", devices or 1, compile=False, threads=cpu_threads(threads),
                       nodes=nodes or 1)
        bf16 = torch.cuda.is_bf16_supported()  # litgpt pretrain offers bf16-true, bf16-mixed or 32-true
        return cls(precision or ("bf16-mixed" if bf16 else "32-true"), devices or torch.cuda.device_count(),
                   compile=True, threads=threads, nodes=nodes or 1, cuda=True)

    @property
    def ranks(self) -> int:
        return self.devices * self.nodes

    @property
    def strategy(self) -> str | None:
        """None: LitGPT's own choice (FSDP on more than one rank). FSDP runs on GPUs only, so
        several CPU ranks train with DDP over gloo."""
        return "ddp" if self.ranks > 1 and not self.cuda else None

    def exports(self) -> dict[str, str]:
        """The environment the training processes need besides the caller's (launch.sh sets it)."""
        env = {}
        if not self.compile:
            env["TORCH_COMPILE_DISABLE"] = "1"
        if self.threads:
            env["OMP_NUM_THREADS"] = str(self.threads)
        env["PYTHONUNBUFFERED"] = "1"  # the log must be complete up to the line that failed
        return env


@dataclass(frozen=True)
class TrainSettings:
    out_dir: Path
    mix: Path
    model_name: str
    model_config: dict
    seq_len: int
    max_tokens: int
    global_batch: int
    micro_batch: int
    lr: float
    min_lr: float
    warmup_steps: int
    weight_decay: float
    tie_embeddings: bool
    save_interval: int
    val_sets: list[str] | None
    val_max_samples: int | None
    val_files: dict[str, str]  # name -> held-out samples file outside the mix (MixData.val_files)
    eval_max_iters: int
    initial_validation: bool
    initial_checkpoint_dir: Path | None
    resume: Path | None
    seed: int
    machine: Machine


def litgpt_config(s: TrainSettings) -> dict:
    return {
        "model_name": s.model_config["name"],
        "model_config": s.model_config,
        "out_dir": str(s.out_dir.resolve()),
        "precision": s.machine.precision,
        # LitGPT refuses both: a resumed finetune continues from its own checkpoint
        "initial_checkpoint_dir": str(s.initial_checkpoint_dir) if s.initial_checkpoint_dir and not s.resume else None,
        "resume": str(s.resume) if s.resume else False,
        "data": {
            "class_path": "mixer_litgpt.MixData",
            "init_args": {"mix": str(s.mix.resolve()), "max_tokens": s.max_tokens, "val_sets": s.val_sets,
                          "val_max_samples": s.val_max_samples, "val_files": s.val_files or None},
        },
        "train": {
            "save_interval": s.save_interval,
            "log_interval": 1,
            "global_batch_size": s.global_batch,
            "micro_batch_size": s.micro_batch,
            "lr_warmup_steps": s.warmup_steps,
            "max_tokens": s.max_tokens,
            "max_seq_length": s.seq_len,
            "tie_embeddings": s.tie_embeddings,
            "max_norm": 1.0,
            "min_lr": s.min_lr,
        },
        "eval": {
            # Validation at every checkpoint: early stopping reads the loss of the checkpoint just saved.
            "interval": s.save_interval,
            "max_iters": s.eval_max_iters,
            "initial_validation": s.initial_validation,
            "final_validation": True,
        },
        "optimizer": {"class_path": "torch.optim.AdamW",
                      "init_args": {"lr": s.lr, "weight_decay": s.weight_decay, **ADAM}},
        "devices": s.machine.devices,
        "num_nodes": s.machine.nodes,
        "tokenizer_dir": None,  # samples are token ids already; LitGPT needs no tokenizer to pretrain
        "logger_name": "csv",
        "seed": s.seed,
    }


def dump(config: dict) -> str:
    return yaml.safe_dump(config, sort_keys=False, default_flow_style=False)
