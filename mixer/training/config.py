"""What a training run is asked to do, typed: the machine it runs on, a pretraining run's
settings and a finetune's. The command line, the Python API and the study scripts all build
these, and mixer.training.runner plans from them; a setting left None takes the trainer's
preset (docs/trainers.md)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, TypeVar

from mixer.errors import UsageError
from mixer.formats.run import SelectOn


@dataclass(frozen=True)
class Machine:
    """Where and how the trainer runs."""
    trainer: str | None = None  # by name (mixer.training.registry); None: litgpt, or a finetune's parent's
    precision: str | None = None
    devices: int | None = None  # per node
    threads: int | None = None  # torch CPU threads
    nodes: int | None = None


@dataclass(frozen=True)
class PretrainConfig:
    """`mixer train pretrain`: a model trained from scratch on a mix."""
    model: str  # a preset: tiny, small, olmo-300m, ...
    tokens: int | None = None  # None: the whole mix
    lr: float | None = None
    min_lr: float | None = None
    warmup: int | None = None  # optimizer steps; None: the preset's share of the run
    batch: int | None = None  # global, in samples
    micro: int | None = None  # per device and forward pass
    checkpoints: int = 10  # evenly spaced
    save_every: int | None = None  # steps between checkpoints, instead of `checkpoints`
    horizon: float | None = None  # the cosine's length as a multiple of the run
    schedule_tokens: int | None = None  # ... or in tokens
    anneal: bool = False  # decay to the floor by the last step
    seed: int = 0
    val_samples: int = 128
    machine: Machine = field(default_factory=Machine)


@dataclass(frozen=True)
class FinetuneConfig:
    """`mixer train finetune|replay`: one finetune of a parent run (a grid point)."""
    checkpoint: str | None = None  # the parent's; None: its final (pretraining) or its winner (a finetune)
    lr: float | None = None  # absolute, or
    lr_ratio: float | None = None  # a multiple of the parent's rate at the checkpoint
    warmup: int | None = None
    schedule: str = "constant"  # a name in mixer.training.schedules.FINETUNE_SCHEDULES
    min_lr: float | None = None
    decay_fraction: float = 0.2
    weight_decay: float | None = None
    batch: int | None = None
    micro: int | None = None
    tokens: int | None = None
    patience: int = 2  # evaluations without improvement before stopping (0: never)
    eval_every: int | None = None  # steps; None: once per domain epoch
    select_on: SelectOn = "val"
    seed: int = 0
    machine: Machine = field(default_factory=Machine)


C = TypeVar("C", PretrainConfig, FinetuneConfig)
_MACHINE = {f.name for f in dataclasses.fields(Machine)}


def config_from(cls: type[C], settings: dict[str, Any]) -> C:
    """A config from flat keywords as the API takes them (`trainer`, `devices`, ... go to its
    Machine); an unknown keyword is a one-line error naming it."""
    machine = {k: settings.pop(k) for k in list(settings) if k in _MACHINE}
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise UsageError(f"{cls.__name__}: unknown setting(s) {', '.join(unknown)} (known: "
                         f"{', '.join(sorted(known - {'machine'} | _MACHINE))})")
    if machine and "machine" in settings:
        raise UsageError(f"{cls.__name__}: give machine= or its settings ({', '.join(machine)}), not both")
    return cls(**settings, **({"machine": Machine(**machine)} if machine else {}))
