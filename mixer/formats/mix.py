"""A mix on disk: manifest.json (the claims a mix makes about itself), its shards in stored
order and its held-out sets, read with numpy alone (checksums: mixer/formats/checksum.py).

`MixFiles` is what every reader of a mix uses, mixer's own commands and trainer adapters
alike: an adapter imports this module inside its trainer's process, so it imports nothing
heavier than numpy and raises only `MixFileError`, a `MixerError`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from mixer.formats.atomic import atomic_open, load_npy, read_versioned, write_json, write_versioned
from mixer.formats.checksum import CHECKSUM, checksum_bytes
from mixer.formats.store import HELDOUT_SPLIT
from mixer.errors import MixerError

MIX_FORMAT = "mixer-mix/1"
# A shard's provenance sidecar, one row per sample: the source's index in the manifest and the
# sample's offset in that source's stream (docs/formats.md). Defined once, here, for every
# writer and reader of the sidecar.
PROV_DTYPE = np.dtype([("source", "<u2"), ("offset", "<u8")])


class MixFileError(MixerError):
    """A mix that is missing, incomplete or not what the run expects (one line, exit 1)."""


def write_manifest(mix_dir: Path | str, manifest: dict) -> Path:
    """MIX/manifest.json, atomically and last (its presence marks a finished mix): the one
    writer of what `load_manifest` reads."""
    return write_versioned(mix_dir, "manifest.json", manifest, MIX_FORMAT)


def write_shard_files(out_dir: Path, name: str, samples: np.ndarray, prov: np.ndarray,
                      source_samples: dict[str, int]) -> dict:
    """A shard's three files: NAME.bin (the samples, row-major), NAME.prov.npy (PROV_DTYPE per
    sample) and, last, its sidecar NAME.json (marks the shard done), each fsynced and renamed
    into place; the sidecar as written."""
    if prov.dtype != PROV_DTYPE or len(prov) != len(samples):
        raise ValueError(f"{name}: provenance must be {len(samples)} rows of {PROV_DTYPE}, got {prov.shape} {prov.dtype}")
    with atomic_open(out_dir / f"{name}.bin") as f:
        f.write(samples.data)
    with atomic_open(out_dir / f"{name}.prov.npy") as f:
        np.save(f, prov, allow_pickle=False)
    record = {
        "file": f"{name}.bin",
        "samples": int(len(samples)),
        CHECKSUM: checksum_bytes(samples.data),
        "provenance": f"{name}.prov.npy",
        f"provenance_{CHECKSUM}": checksum_bytes((out_dir / f"{name}.prov.npy").read_bytes()),
        "source_samples": source_samples,
    }
    write_json(out_dir / f"{name}.json", record)
    return record


def load_manifest(mix_dir: Path | str) -> dict:
    """MIX/manifest.json, checked to be a finished mixer mix; MixFileError naming the file."""
    path = Path(mix_dir) / "manifest.json"
    if not path.is_file():
        pending = Path(mix_dir) / ".build" / "spec.json"
        hint = (" (the build is unfinished: re-run the same mixer build to complete it)" if pending.exists()
                else " (moved or deleted? run mixer build)")
        raise MixFileError(f"{path}: no manifest; not a finished mix{hint}")
    manifest = read_versioned(path, MIX_FORMAT, "manifest", error=MixFileError)
    return manifest


@dataclass(frozen=True)
class MixFiles:
    """A finished mix: its manifest, shards (memmaps of (n, seq_len + 1) token ids) and eval sets."""

    path: Path
    manifest: dict

    @classmethod
    def open(cls, path: Path | str) -> "MixFiles":
        path = Path(path).expanduser().resolve()
        return cls(path, load_manifest(path))

    @property
    def name(self) -> str:
        return str(self.manifest.get("name") or self.path.name)

    @property
    def kind(self) -> str:
        return str(self.manifest.get("kind") or "pretrain")

    @property
    def seq_len(self) -> int:
        return int(self.manifest["seq_len"])

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.manifest["dtype"])

    @property
    def samples(self) -> int:
        return int(self.manifest["samples"])

    @property
    def tokenizer(self) -> dict:
        return dict(self.manifest.get("tokenizer") or {})

    @property
    def vocab_size(self) -> int:
        return int(self.tokenizer["vocab_size"])

    def source(self, role: str) -> dict | None:
        """The domain or general source entry (None when the mix has none)."""
        name = self.manifest.get(role)
        for s in self.manifest.get("sources", []):
            if s.get("name") == name and s.get("role") == role:
                return s
        return None

    @cached_property
    def shard_starts(self) -> np.ndarray:
        """Mix index of each shard's first sample, plus the total at the end."""
        counts = [int(s["samples"]) for s in self.manifest["shards"]]
        return np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])

    def shard(self, k: int) -> np.ndarray:
        entry = self.manifest["shards"][k]
        f = self.path / entry["file"]
        return self._memmap(f, int(entry["samples"]))

    def read(self, start: int, stop: int) -> np.ndarray:
        """Samples [start, stop) of the mix in stored order, across shard boundaries."""
        if not 0 <= start <= stop <= self.samples:
            raise MixFileError(f"{self.path}: samples {start}:{stop} are outside the mix's 0:{self.samples}")
        parts, starts = [], self.shard_starts
        k = int(np.searchsorted(starts, start, side="right")) - 1
        while start < stop:
            lo, hi = int(starts[k]), int(starts[k + 1])
            take = min(stop, hi)
            parts.append(np.asarray(self.shard(k)[start - lo : take - lo]))
            start, k = take, k + 1
        return np.concatenate(parts) if len(parts) != 1 else parts[0]

    def provenance(self, k: int) -> np.ndarray:
        entry = self.manifest["shards"][k]
        return load_npy(self.path / entry["provenance"], mmap_mode="r")

    @property
    def eval_sets(self) -> dict[str, dict]:
        """Held-out sets by name (`music-test`, `prose-val`)."""
        return {Path(e["file"]).stem: e for e in self.manifest.get("eval", [])}

    def eval_name(self, role: str) -> str | None:
        """The held-out set of the domain (test) or general (val) source, if the mix has it."""
        name, split = self.manifest.get(role), HELDOUT_SPLIT[role]
        key = f"{name}-{split}"
        return key if name and key in self.eval_sets else None

    def eval_samples(self, name: str) -> np.ndarray:
        if name not in self.eval_sets:
            have = ", ".join(self.eval_sets) or "none"
            raise MixFileError(f"{self.path}: no eval set {name!r} (has {have})")
        entry = self.eval_sets[name]
        return self._memmap(self.path / entry["file"], int(entry["samples"]))

    def _memmap(self, f: Path, n: int) -> np.ndarray:
        width = self.seq_len + 1
        if not f.is_file():
            raise MixFileError(f"{f}: missing; the mix is incomplete (re-run mixer build)")
        if f.stat().st_size != n * width * self.dtype.itemsize:
            raise MixFileError(f"{f}: {f.stat().st_size} bytes, expected {n} samples x {width} x {self.dtype.itemsize}")
        if n == 0:
            return np.zeros((0, width), dtype=self.dtype)
        return np.memmap(f, dtype=self.dtype, mode="r", shape=(n, width))
