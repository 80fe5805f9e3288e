"""A second trainer for the tests, with no LitGPT and no torch: a bigram model trained by
counting transitions, step by step over the mix in stored order.

It implements `mixer.training.trainer.Trainer` for real, so the runner, `mixer eval`, grids
and finetunes are exercised through the protocol alone. Tests register it with
`mixer.training.registry.register("count", "count_trainer:TRAINER")`. Its one model preset
is `bigram`; `lr` is its additive smoothing, so a grid over lr has a real winner.

RUN files: count.json (the config), log.jsonl (train loss per step), ckpt/step-NNNNN/
(counts.npy, step.json).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from mixer.errors import MixerError, UsageError
from mixer.training.trainer import EvalModel, RunSpec


@dataclass(frozen=True)
class CountMachine:
    devices: int = 1
    threads: int | None = None


def bigram_loss(counts: np.ndarray, smoothing: float, samples: np.ndarray) -> float:
    """Mean -log p(next | previous) over every prediction in (n, seq_len + 1) samples."""
    s = np.asarray(samples, dtype=np.int64)
    a, b = s[:, :-1].ravel(), s[:, 1:].ravel()
    p = (counts[a, b] + smoothing) / (counts.sum(axis=1)[a] + smoothing * counts.shape[0])
    return float(-np.log(p).mean())


@dataclass
class CountJob:
    spec: RunSpec

    @property
    def config(self) -> dict:
        s = self.spec
        return {"mix": str(s.mix.path), "vocab": s.mix.vocab_size, "steps": s.steps, "global_batch": s.global_batch,
                "seq_len": s.mix.seq_len, "smoothing": s.lr, "save_interval": s.save_interval,
                "val_sets": s.val_sets, "val_files": {k: str(f.path) for k, f in s.val_files.items()},
                "patience": s.patience,
                "init_from": str(s.init_from) if s.init_from else None}

    def config_text(self) -> str:
        return json.dumps(self.config, indent=2) + "\n"

    def model_params(self) -> int:
        return self.spec.mix.vocab_size ** 2


class CountTrainer:
    def machine(self, precision: str | None, devices: int | None, threads: int | None) -> CountMachine:
        return CountMachine(devices or 1, threads)

    def defaults(self, model: str, kind: str) -> dict:
        if model != "bigram":
            raise UsageError(f"--model: unknown preset {model!r} (choose from bigram)")
        return {"lr": 1.0, "min_lr": 1.0, "warmup_fraction": 0.0, "warmup": 0, "batch": 8, "micro_batch": 8,
                "weight_decay": 0.0}

    def plan(self, spec: RunSpec) -> CountJob:
        if spec.init_from is not None:
            counts = self._counts(spec.init_from)
            if counts.shape[0] < spec.mix.vocab_size:
                raise MixerError(f"{spec.mix.path}: tokenizer has {spec.mix.vocab_size} ids, the parent model "
                                 f"{counts.shape[0]}")
        return CountJob(spec)

    def launch(self, job: CountJob, echo: bool = False) -> None:
        s, run = job.spec, job.spec.run_dir
        (run / "count.json").write_text(job.config_text())
        vocab = s.mix.vocab_size
        counts = self._counts(s.init_from).copy() if s.init_from else np.zeros((vocab, vocab), dtype=np.int64)
        names = s.mix.eval_sets if s.val_sets is None else s.val_sets
        val = np.concatenate([np.asarray(s.mix.eval_samples(n)) for n in names]
                             + [np.asarray(f.read(s.mix)) for f in s.val_files.values()])
        best, bad, log = np.inf, 0, []
        for step in range(1, s.steps + 1):
            batch = np.asarray(s.mix.read((step - 1) * s.global_batch, step * s.global_batch), dtype=np.int64)
            log.append({"tokens": step * s.global_batch * s.mix.seq_len, "lr": s.lr,
                        "train_loss": bigram_loss(counts, s.lr, batch)})
            np.add.at(counts, (batch[:, :-1].ravel(), batch[:, 1:].ravel()), 1)
            if step % s.save_interval and step != s.steps:
                continue
            ckpt = run / "ckpt" / f"step-{step:05d}"
            ckpt.mkdir(parents=True, exist_ok=True)
            np.save(ckpt / "counts.npy", counts)
            (ckpt / "step.json").write_text(json.dumps({"step": step}))
            if s.patience:
                loss = bigram_loss(counts, s.lr, val)
                best, bad = (loss, 0) if loss < best else (best, bad + 1)
                if bad >= s.patience:
                    break
        (run / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))

    def checkpoints(self, run_dir: Path) -> list[Path]:
        return sorted((Path(run_dir) / "ckpt").glob("step-*"))

    def step_of(self, ckpt: Path) -> int:
        f = Path(ckpt) / "step.json"
        if not f.is_file():
            raise MixerError(f"{f}: missing; not a count checkpoint")
        return int(json.loads(f.read_text())["step"])

    def tokens_per_step(self, run_dir: Path) -> int:
        cfg = json.loads((Path(run_dir) / "count.json").read_text())
        return cfg["global_batch"] * cfg["seq_len"]

    def load_for_eval(self, run_dir: Path, ckpt: Path, device: str | None, threads: int | None) -> EvalModel:
        smoothing = json.loads((Path(run_dir) / "count.json").read_text())["smoothing"]
        return EvalModel(step=self.step_of(ckpt), loss=partial(bigram_loss, self._counts(ckpt), smoothing))

    def train_log(self, run_dir: Path) -> dict[int, dict[str, float]]:
        f = Path(run_dir) / "log.jsonl"
        rows = [json.loads(x) for x in f.read_text().splitlines()] if f.is_file() else []
        return {r["tokens"]: {"train_loss": r["train_loss"], "lr": r["lr"]} for r in rows}

    @staticmethod
    def _counts(ckpt: Path) -> np.ndarray:
        f = Path(ckpt) / "counts.npy"
        if not f.is_file():
            raise MixerError(f"{f}: missing; not a count checkpoint")
        return np.load(f)


TRAINER = CountTrainer()
