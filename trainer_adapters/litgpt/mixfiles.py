"""A mix on disk as the trainer sees it: manifest, shards in stored order, eval sets.

Reads only what docs/formats.md promises, with numpy alone, so it works inside LitGPT's
process without the rest of mixer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

MIX_FORMAT = "mixer-mix/1"


class MixFileError(ValueError):
    """A mix that is missing, incomplete or not what the run expects (one line)."""


@dataclass(frozen=True)
class MixFiles:
    path: Path
    manifest: dict

    @classmethod
    def open(cls, path: Path | str) -> "MixFiles":
        path = Path(path).expanduser().resolve()
        f = path / "manifest.json"
        if not f.is_file():
            raise MixFileError(f"{f}: missing; {path} is not a finished mix (run mixer build)")
        try:
            manifest = json.loads(f.read_text())
        except json.JSONDecodeError as e:
            raise MixFileError(f"{f}: not valid JSON ({e.msg} at line {e.lineno})") from None
        if not isinstance(manifest, dict) or manifest.get("format") != MIX_FORMAT:
            raise MixFileError(f"{f}: not a {MIX_FORMAT} manifest")
        return cls(path, manifest)

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
        return np.load(self.path / entry["provenance"], mmap_mode="r")

    @property
    def eval_sets(self) -> dict[str, dict]:
        """Held-out sets by name (`music-test`, `prose-val`)."""
        return {Path(e["file"]).stem: e for e in self.manifest.get("eval", [])}

    def eval_name(self, role: str) -> str | None:
        """The held-out set of the domain (test) or general (val) source, if the mix has it."""
        name, split = self.manifest.get(role), {"domain": "test", "general": "val"}[role]
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
