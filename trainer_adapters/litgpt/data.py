"""The LitGPT DataModule: a mix's samples in stored order, never reshuffled, never wrapped.

The order of the shards *is* the experiment (stratified domain placement, SCPT windows),
so the loader reads samples sequentially. Global micro-batch i covers samples
[i*B*W, (i+1)*B*W) (B micro-batch size, W data-parallel ranks), rank r takes its B-slice:
an optimizer step consumes one contiguous block of the stored order, whatever W is.

LitGPT's training loop wraps the loader in a CycleIterator and fetches one batch past the
last step before it checks the step count. So the loader ends quietly when exactly the
run's budget was served (it reads no look-ahead batch), and raises when the run wants more
than the mix holds; `setup` refuses such a run before it starts.

With MIXER_SAMPLE_TRACE=DIR in the environment each rank appends one line per micro-batch it
reads to DIR/rank-<r>.txt: `iteration first_sample end_sample` (end exclusive), so a test (or
a user) can check that the ranks together read every sample once, in order.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from litgpt.data import DataModule
from litgpt.tokenizer import Tokenizer
from torch.utils.data import DataLoader, IterableDataset

from mixer.formats.mix import MixFileError, MixFiles


def _rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _trace_file(rank: int):
    folder = os.environ.get("MIXER_SAMPLE_TRACE")
    if not folder:
        return None
    Path(folder).mkdir(parents=True, exist_ok=True)
    return open(Path(folder) / f"rank-{rank}.txt", "a")


class _MappedShards(MixFiles):
    """A mix whose shards are each mapped once, not once per read: `MixFiles.shard` makes a
    new np.memmap (two stats, a mmap, a munmap) on every call, which cost the loader more
    than copying its batch (docs/benchmarks.md, the LitGPT loader). The last MAPPED shards
    stay mapped: the loader reads in stored order, and a batch may cross into the next."""

    MAPPED = 2

    def shard(self, k: int) -> np.ndarray:
        maps: dict[int, np.ndarray] = self.__dict__.setdefault("_mapped", {})
        if k not in maps:
            while len(maps) >= self.MAPPED:  # unmapped once no view of it is left
                del maps[next(iter(maps))]
            maps[k] = np.asarray(super().shard(k))  # a plain ndarray view: slicing a memmap is slow
        return maps[k]


class MixStream(IterableDataset):
    """Yields (B, seq_len + 1) int64 batches of the mix in stored order, from `iteration` on."""

    def __init__(self, mix: MixFiles, batch_size: int, needed_samples: int, rank: int = 0, world: int = 1) -> None:
        mix = _MappedShards(mix.path, mix.manifest)
        self.mix, self.batch_size, self.needed = mix, batch_size, needed_samples
        self.rank, self.world = rank, world
        self.iteration = 0  # global micro-batches served; the whole resumable state
        self.trace = _trace_file(rank)

    @property
    def per_iteration(self) -> int:
        return self.batch_size * self.world

    def __iter__(self) -> Iterator[torch.Tensor]:
        while True:
            start = self.iteration * self.per_iteration
            if start >= self.needed:
                return  # LitGPT's look-ahead past the run's last step: end, never wrap, read nothing
            if start + self.per_iteration > self.mix.samples:
                raise MixFileError(
                    f"{self.mix.path}: the mix is exhausted after {start} of the {self.needed} samples the run "
                    f"needs; build a bigger mix or train on fewer tokens"
                )
            lo = start + self.rank * self.batch_size
            batch = self.mix.read(lo, lo + self.batch_size)
            if self.trace is not None:
                self.trace.write(f"{self.iteration} {lo} {lo + self.batch_size}\n")
                self.trace.flush()
            self.iteration += 1
            yield torch.from_numpy(batch.astype(np.int64))


class MixLoader(DataLoader):
    """A DataLoader with a small state dict, so Fabric checkpoints the position, not the loader."""

    def __init__(self, stream: MixStream) -> None:
        super().__init__(stream, batch_size=None, num_workers=0)  # workers would read ahead of the state
        self.stream = stream

    def state_dict(self) -> dict[str, Any]:
        return {"mix": str(self.stream.mix.path), "iteration": self.stream.iteration,
                "samples_per_iteration": self.stream.per_iteration}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue at the first sample the checkpoint had not read, whatever the ranks and
        micro-batch of the run that saved it: a checkpoint follows an optimizer step, so that
        sample starts a global batch, and with the global batch unchanged it starts a
        micro-batch of this run too."""
        done = int(state["iteration"]) * int(state["samples_per_iteration"])
        if done % self.stream.per_iteration:
            raise MixFileError(
                f"resume: the checkpoint stopped after sample {done}, inside a micro-batch step of this run "
                f"({self.stream.batch_size} samples x {self.stream.world} ranks); resume with the run's global "
                "batch size"
            )
        self.stream.iteration = done // self.stream.per_iteration


class _EvalStream(IterableDataset):
    """Every rank evaluates the whole held-out set (iterable: Fabric adds no sampler), so the
    validation loss, and early stopping on it, agree across ranks."""

    def __init__(self, samples: np.ndarray, batch_size: int) -> None:
        self.samples, self.batch_size = samples, batch_size

    def __iter__(self) -> Iterator[torch.Tensor]:
        for i in range(0, len(self.samples), self.batch_size):
            yield torch.from_numpy(np.asarray(self.samples[i : i + self.batch_size]).astype(np.int64))


@dataclass
class MixData(DataModule):
    """A mixer mix (docs/formats.md) for `litgpt pretrain`."""

    mix: Path
    """The mix folder (holds manifest.json)."""
    max_tokens: int
    """The run's train.max_tokens: the loader refuses a run longer than the mix instead of wrapping."""
    val_sets: list[str] | None = None
    """Held-out sets for LitGPT's validation, e.g. ["music-test"]; default: all of the mix's."""
    val_max_samples: int | None = None
    """Use at most this many samples of each held-out set (the first ones: a fixed subset)."""
    val_files: dict[str, str] | None = None
    """Held-out sets outside the mix, name -> file of (n, seq_len + 1) ids in the mix's dtype
    (mixer writes the domain validation split into the run folder); validated on besides val_sets."""

    batch_size: int = field(default=1, init=False, repr=False)
    max_seq_length: int = field(default=-1, init=False, repr=False)

    def __post_init__(self) -> None:
        super().__init__()

    def connect(self, tokenizer: Tokenizer | None = None, batch_size: int = 1, max_seq_length: int | None = None,
                **kwargs: Any) -> None:
        self.batch_size = batch_size
        self.max_seq_length = -1 if max_seq_length is None else max_seq_length

    def setup(self, stage: str = "") -> None:
        self.files = MixFiles.open(self.mix)
        if self.max_seq_length != self.files.seq_len:
            raise MixFileError(
                f"{self.files.path}: samples hold {self.files.seq_len} + 1 tokens but the model trains on "
                f"{self.max_seq_length}; set train.max_seq_length: {self.files.seq_len}"
            )
        rank, world = _rank_world()
        tokens_per_iteration = self.batch_size * self.files.seq_len
        iterations = (self.max_tokens // world) // tokens_per_iteration  # LitGPT's max_iters
        needed = iterations * self.batch_size * world
        if needed > self.files.samples:
            raise MixFileError(
                f"{self.files.path}: the run asks for {needed} samples ({needed * self.files.seq_len} tokens) but the "
                f"mix holds {self.files.samples} ({self.files.samples * self.files.seq_len} tokens)"
            )
        self.stream = MixStream(self.files, self.batch_size, needed, rank, world)
        names = list(self.files.eval_sets) if self.val_sets is None else list(self.val_sets)
        files = dict(self.val_files or {})
        if not names and not files:
            raise MixFileError(f"{self.files.path}: the mix has no held-out sets; LitGPT needs one to validate on")
        parts = [self.files.eval_samples(n)[: self.val_max_samples] for n in names]
        width = self.files.seq_len + 1
        for name, f in files.items():
            size = Path(f).stat().st_size if Path(f).is_file() else -1
            if size < 0 or size % (width * self.files.dtype.itemsize):
                raise MixFileError(f"{f}: held-out set {name} is missing or not whole samples of {width} tokens")
            parts.append(np.memmap(f, dtype=self.files.dtype, mode="r").reshape(-1, width)[: self.val_max_samples])
        names += list(files)
        self.val_samples = np.concatenate([np.asarray(p) for p in parts])
        if len(self.val_samples) == 0:
            raise MixFileError(f"{self.files.path}: held-out sets {', '.join(names)} are empty")

    def train_dataloader(self) -> MixLoader:
        return MixLoader(self.stream)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(_EvalStream(self.val_samples, self.batch_size), batch_size=None, num_workers=0)
