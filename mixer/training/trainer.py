"""The trainer protocol: what `mixer train` and `mixer eval` need from a training framework.

mixer decides the experiment (docs/formats.md, Run): which mix, how many optimizer steps of
how many samples, the learning-rate schedule, when to save and validate, early stopping,
which parent checkpoint a finetune starts from. That decision is a `RunSpec`. A trainer
turns it into its own configuration (`plan`), runs it (`launch`), and reads back what it
wrote: its checkpoints, the step and tokens at each, a model to score held-out samples
with, and its training-loss log. It never decides anything a study compares: two trainers
given one RunSpec train on the same samples in the same order for the same steps.

Trainers are found by name through `mixer.training.registry` (the one module that knows
where adapters live); LitGPT is the first. docs/trainers.md says how to add one.

Optional: `timing(run_dir) -> dict | None`, the trainer's account of its last launch
(`startup`, `compile`, `train_steps`, `validation`, `checkpoints` in seconds, `tokens`,
`device`, `devices`, `precision`, `flops_per_token`, `environment`, `finished` as epoch
seconds), from which mixer writes run.json's `time`, `throughput` (MFU) and `environment`;
without it run.json records the launch's wall time alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, runtime_checkable

import numpy as np

from mixer.formats.mix import MixFiles
from mixer.formats.run import RunKind


@runtime_checkable
class Machine(Protocol):
    """The hardware a run trains on, as far as mixer needs to know it."""

    devices: int  # data-parallel ranks per node: the global batch must split evenly over all of them
    threads: int | None  # CPU threads for evaluation (None: the framework's default)
    # A machine of several nodes also has `nodes` (ranks in all: devices x nodes).


@dataclass(frozen=True)
class HeldoutFile:
    """Held-out samples to validate on besides the mix's eval sets (the domain validation split
    a finetune is early-stopped on, a sample set of the mix: mixer.formats.sample_sets):
    `samples` rows of seq_len + 1 token ids in the mix's dtype, C order, as a mix's eval/*.bin."""

    path: Path
    samples: int

    def read(self, mix: MixFiles) -> np.ndarray:
        width = mix.seq_len + 1
        return np.memmap(self.path, dtype=mix.dtype, mode="r", shape=(self.samples, width))


@dataclass(frozen=True)
class RunSpec:
    """One training run, trainer-neutral. Steps are optimizer steps of `global_batch` samples
    of the mix in stored order, from its first sample (never reshuffled, never wrapped)."""

    kind: RunKind
    run_dir: Path  # RUN: the trainer writes its files under it
    mix: MixFiles
    model: str  # the trainer's model preset (recorded in run.json)
    steps: int
    global_batch: int  # samples per optimizer step
    micro_batch: int  # samples per device per forward pass
    lr: float
    min_lr: float  # the schedule's floor
    warmup_steps: int
    weight_decay: float
    schedule: str  # cosine (to min_lr) | constant (after warmup) | wsd (warmup, stable, decay)
    schedule_tokens: int | None  # cosine: horizon in tokens when longer than the run
    decay_fraction: float  # wsd: share of the steps spent decaying
    save_interval: int  # steps between checkpoints; each checkpoint is validated
    val_sets: list[str] | None  # held-out sets of the mix to validate on (None: all)
    val_max_samples: int | None  # first N samples of each
    patience: int  # early stopping: validations without a lower loss before stopping (0: never)
    seed: int
    machine: Machine
    init_from: Path | None = None  # finetune/replay: the parent's checkpoint the run starts from
    parent: Path | None = None  # finetune/replay: the parent RUN
    resume: bool = False  # RUN holds an unfinished run of this trainer: continue it
    # Further held-out sets to validate on, by name, besides `val_sets`: a finetune selected on
    # the domain validation split validates on that alone (val_sets = []).
    val_files: dict[str, HeldoutFile] = field(default_factory=dict)

    @property
    def tokens(self) -> int:
        return self.steps * self.global_batch * self.mix.seq_len


class Job(Protocol):
    """A RunSpec as one trainer will run it."""

    def config_text(self) -> str:
        """The trainer's complete configuration, as `mixer train --dry-run` prints it."""
        ...

    def model_params(self) -> int:
        """Parameters of the model (tied embeddings counted once), for run.json."""
        ...


@dataclass(frozen=True)
class EvalModel:
    """A checkpoint loaded for scoring. `loss` takes (n, seq_len + 1) token ids and returns the
    token-weighted mean next-token cross-entropy in nats over all n * seq_len predictions."""

    step: int  # optimizer steps taken when the checkpoint was saved
    loss: Callable[[np.ndarray], float]


@runtime_checkable
class Trainer(Protocol):
    """A training framework. It is known by the name it is registered under (registry.py)."""

    def machine(self, precision: str | None, devices: int | None, threads: int | None) -> Machine:
        """The hardware to train on: what was asked, else what is there. A trainer that trains
        on several nodes takes `nodes` too (`--num-nodes`; mixer passes it only when above 1)."""
        ...

    def defaults(self, model: str, kind: RunKind) -> dict[str, Any]:
        """The model preset's hyperparameters for `kind` (pretrain, or finetune for both
        finetune and replay): batch, micro_batch, weight_decay; for pretrain also lr, min_lr
        and warmup_fraction, for finetune warmup (finetuning rates are multiples of the
        parent's, set by mixer). UsageError naming --model when unknown."""
        ...

    def plan(self, spec: RunSpec) -> Job:
        """Check that the model fits the mix (vocabulary, context) and write nothing; resume
        from the run's last checkpoint when RUN holds an unfinished run of this trainer."""
        ...

    def launch(self, job: Job, echo: bool = False) -> None:
        """Train to the end (or the early stop), in RUN; MixerError in one line when it fails.
        Also leaves the training log readable by `train_log`."""
        ...

    def checkpoints(self, run_dir: Path) -> list[Path]:
        """The run's checkpoints in training order (a final copy of the last step, if the
        trainer writes one, comes last). Each name is unique within the run."""
        ...

    def step_of(self, ckpt: Path) -> int:
        """Optimizer steps taken at a checkpoint; MixerError when it cannot be read."""
        ...

    def tokens_per_step(self, run_dir: Path) -> int:
        """Training tokens per optimizer step of the run."""
        ...

    def load_for_eval(self, run_dir: Path, ckpt: Path, device: str | None, threads: int | None) -> EvalModel:
        """The checkpoint as a scorer, on `device` (None: the best available)."""
        ...

    def train_log(self, run_dir: Path) -> dict[int, dict[str, float]]:
        """Tokens seen -> {"train_loss", "lr"} at that point of training, as logged."""
        ...
