"""A mix request (MixSpec) and everything derived from it (MixPlan), before any byte is written.

The spec is the experiment's record: it is small, JSON-serializable, validated, and is
all a build task needs to recompute its part of the plan (so tasks can run anywhere).
"""

from __future__ import annotations

import dataclasses
import os
import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TypedDict

import numpy as np

from mixer.errors import MixerError, UsageError
from mixer.formats.mix import load_manifest
from mixer.mixing.schedule import Counts, Layout, Placement, epoch_start_samples, solve_counts
from mixer.formats.store import Store, check_same_tokenizer, list_stores, open_store
from mixer.mixing.plan_cache import PlanDir
from mixer.mixing.streams import SourceStream, source_key
from mixer.units import check_seed, format_count

DEFAULT_SHARD_BYTES = 1 << 27  # ~128 MiB: big enough for sequential I/O, small enough to spread


MAX_GENERAL_EPOCHS = 4.0


# What `mixer plan --json` prints and api.plan returns (the manifest's body): the shapes in
# code, so a reader several layers away is type-checked (tests/test_result_types.py holds
# them to real output, both ways).
class FractionSummary(TypedDict):
    requested: float | None  # the domain share asked for (1 - replay for a replay mix)
    achieved: float  # in the window
    window: list[float]
    overall: float  # over the whole run


class SourceSummary(TypedDict):
    id: int  # in the provenance
    name: str
    role: str
    store: str
    train_tokens: int
    train_documents: int
    documents: str  # "all" or "subset"
    samples: int
    stream_tokens: int
    epochs: float
    documents_full_passes: dict[str, int]  # passes -> documents
    partial_documents: int
    epoch_start_samples: list[int]


class PlacedSummary(TypedDict):
    source: str
    id: int
    requested: float
    achieved: float
    window_bound: float  # every window of W samples holds W * achieved within this


class _PlanKeys(TypedDict):
    name: str
    kind: str
    seed: int
    seq_len: int
    dtype: str
    tokenizer: dict
    stores: str
    domain: str | None
    general: str | None
    fraction: FractionSummary
    samples: int
    tokens: int
    samples_per_shard: int
    shards: int
    bytes: int
    sources: list[SourceSummary]
    warnings: list[str]


class PlanSummary(_PlanKeys, total=False):  # total=False: see mixing/build.py's BuildStatus
    placed: list[PlacedSummary]  # N-source mixes only


@dataclass
class MixSpec:
    stores: str
    domain: str | None = None
    general: str | None = None
    tokens: int | None = None
    fraction: float | None = None
    epochs: float | None = None
    replay: float | None = None
    seq_len: int = 2048
    seed: int = 0
    window: tuple[float, float] = (0.0, 1.0)
    max_epochs: float = 100.0
    samples_per_shard: int | None = None
    domain_subset_tokens: int | None = None  # dataset-size studies: a seeded subset of the domain
    subset_seed: int = 0
    exclude_seen_in: list[str] = field(default_factory=list)  # mixes whose domain documents to leave out
    name: str | None = None
    # N-source mixes: further sources (domain or general stores) with their own fractions of
    # the window, placed after the domain; the general store takes what is left.
    extra: list[tuple[str, float]] = field(default_factory=list)
    # General data repeated more than a few times stops acting as fresh data (repetition
    # beyond ~4 epochs loses most of its value: Muennighoff et al. 2023, "Scaling
    # Data-Constrained Language Models"); a mix that would do so is refused unless raised.
    max_general_epochs: float = MAX_GENERAL_EPOCHS

    def validate(self) -> None:
        check_seed(self.seed)
        check_seed(self.subset_seed, "subset seed")
        if self.seq_len < 1:
            raise UsageError(f"--seq-len must be positive, got {self.seq_len}")
        if self.domain is None and self.general is None:
            raise UsageError("give --domain and/or --general")
        if self.fraction is not None and not 0 <= self.fraction < 1:
            raise UsageError(
                f"--fraction must be in [0, 1) (0 = no domain in training, NPT), got {self.fraction}"
            )
        if self.replay is not None:
            if not 0 < self.replay < 1:
                raise UsageError(f"--replay must be in (0, 1), got {self.replay}")
            if self.fraction is not None:
                raise UsageError("--replay sets the domain share (1 - replay); drop --fraction")
        a, b = self.window
        if not 0 <= a < b <= 1:
            raise UsageError(f"--window must be A:B with 0 <= A < B <= 1, got {a}:{b}")
        if not self.max_general_epochs > 0:
            raise UsageError(f"--max-general-epochs must be positive, got {self.max_general_epochs}")
        if self.epochs is not None and self.epochs <= 0:
            raise UsageError(f"--epochs must be positive, got {self.epochs}")
        names = [self.domain] + [n for n, _ in self.extra]
        for name, f in self.extra:
            if not 0 < f < 1:
                raise UsageError(f"--mix {name}={f}: the fraction must be in (0, 1)")
        if len(set(names)) != len(names) or self.general in names:
            raise UsageError(f"--mix: each source may appear once (got {', '.join(str(n) for n in names)}, general {self.general})")
        if self.extra and (self.domain is None or self.fraction is None or self.replay is not None):
            raise UsageError("further --mix sources need a pretraining mix with a first --mix NAME=FRACTION (or --domain and --fraction)")
        if self.extra and (self.fraction or 0) + sum(f for _, f in self.extra) >= 1:
            raise UsageError("--mix: the fractions add up to 1 or more; the general source needs a share")

    @property
    def kind(self) -> str:
        if self.replay is not None:
            return "replay"
        if self.domain is not None and self.fraction is None and self.tokens is None:
            return "finetune"
        return "pretrain"

    def default_name(self) -> str:
        if self.name:
            return self.name
        if self.kind == "finetune":
            return f"{self.domain}-ft-e{self.epochs:g}"
        if self.kind == "replay":
            return f"{self.domain}-replay{self.replay:g}-e{self.epochs:g}"
        tok = format_count(self.tokens or 0)
        if not self.domain or self.fraction == 0:
            return f"npt-{tok}"
        win = "" if self.window == (0.0, 1.0) else f"-w{self.window[0]:g}-{self.window[1]:g}"
        share = f"f{self.fraction:g}" if self.fraction is not None else f"e{self.epochs:g}"
        more = "".join(f"+{n}-f{f:g}" for n, f in self.extra)
        return f"{self.domain}-{share}{more}{win}-{tok}"

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["window"] = list(self.window)
        if self.extra:
            d["extra"] = [[n, f] for n, f in self.extra]
        else:  # two-source specs serialize exactly as before N-source mixes existed
            del d["extra"]
        if self.max_general_epochs == MAX_GENERAL_EPOCHS:  # likewise: the default is left out
            del d["max_general_epochs"]
        return d

    @classmethod
    def from_json(cls, d: dict) -> "MixSpec":
        d = dict(d)
        d["window"] = tuple(d.get("window", (0.0, 1.0)))
        d["extra"] = [(str(n), float(f)) for n, f in d.get("extra", [])]
        return cls(**d)


@dataclass
class SourcePlan:
    id: int
    role: str
    stream: SourceStream
    samples: int
    train: bool  # False: present only for its held-out eval set

    @property
    def store(self) -> Store:
        return self.stream.store

    @cached_property
    def passes(self) -> tuple[np.ndarray, int]:
        return self.stream.passes(self.stream_tokens)

    @property
    def stream_tokens(self) -> int:
        return self.samples * self.stream.seq_len + 1 if self.samples else 0

    @property
    def epochs(self) -> float:
        return self.stream_tokens / max(1, self.stream.epoch_tokens)

    def summary(self) -> SourceSummary:
        hist, partial = self.stream.pass_histogram(self.stream_tokens)
        return {
            "id": self.id,
            "name": self.stream.name,
            "role": self.role,
            "store": str(self.store.path.resolve()),
            "train_tokens": self.stream.epoch_tokens,
            "train_documents": self.stream.n_docs,
            "documents": "subset" if self.stream.documents is not None else "all",
            "samples": self.samples,
            "stream_tokens": self.stream_tokens,
            "epochs": round(self.epochs, 6),
            "documents_full_passes": hist,
            "partial_documents": partial,
            "epoch_start_samples": epoch_start_samples(self.stream_tokens, self.stream.epoch_tokens, self.stream.seq_len),
        }


@dataclass
class MixPlan:
    spec: MixSpec
    counts: Counts
    layout: Layout
    sources: list[SourcePlan]  # ids: 0 the general store, 1 the domain, then the extra sources
    tokenizer: dict
    warnings: list[str]

    @property
    def placement(self) -> Placement:
        return self.layout.levels[0]

    @property
    def domain(self) -> SourcePlan | None:
        return next((s for s in self.sources if s.stream.name == self.spec.domain), None)

    @property
    def general(self) -> SourcePlan | None:
        return next((s for s in self.sources if s.role == "general" and s.stream.name not in self._placed_names), None)

    @property
    def _placed_names(self) -> set[str]:
        return {self.spec.domain} | {n for n, _ in self.spec.extra}

    def level_sources(self) -> list[SourcePlan | None]:
        """The source of each layout level (the domain, then the extras), then the remainder."""
        by_name = {s.stream.name: s for s in self.sources}
        placed = [by_name.get(self.spec.domain)] + [by_name[n] for n, _ in self.spec.extra]
        return placed + [self.general]

    def placed_fractions(self) -> list[PlacedSummary]:
        """Requested and achieved share of each placed source, with its window bound."""
        width = max(1, self.counts.window_width)
        requested = [self.spec.fraction if self.spec.replay is None else 1 - self.spec.replay]
        requested += [f for _, f in self.spec.extra]
        out = []
        for src, pl, req, bound in zip(self.level_sources(), self.layout.levels, requested, self.layout.bounds()):
            if src is None:
                continue
            out.append({"source": src.stream.name, "id": src.id, "requested": req,
                        "achieved": pl.n_domain / width, "window_bound": round(bound, 9)})
        return out

    @property
    def dtype(self) -> np.dtype:
        return self.sources[0].store.dtype

    @property
    def sample_bytes(self) -> int:
        return (self.spec.seq_len + 1) * self.dtype.itemsize

    @property
    def samples_per_shard(self) -> int:
        return self.spec.samples_per_shard or max(1, DEFAULT_SHARD_BYTES // self.sample_bytes)

    @property
    def n_shards(self) -> int:
        return -(-self.counts.samples // self.samples_per_shard)

    def shard_range(self, k: int) -> tuple[int, int]:
        start = k * self.samples_per_shard
        return start, min(self.counts.samples, start + self.samples_per_shard)

    def materialize(self) -> list[dict]:
        """Compute every per-document array the build's shards read (each stream's epochs), so
        tasks only map them; returns what was computed, per stream."""
        out = []
        for src in self.sources:
            if src.train and src.samples:
                epochs = src.stream.materialize(src.stream_tokens)
                out.append({"source": src.stream.name, "dir": src.stream.files.name, "key": src.stream.files.key,
                            "epochs": epochs})
        return out

    def summary(self) -> PlanSummary:
        c = self.counts
        return {
            "name": self.spec.default_name(),
            "kind": self.spec.kind,
            "seed": self.spec.seed,
            "seq_len": c.seq_len,
            "dtype": self.dtype.str,
            "tokenizer": self.tokenizer,
            "stores": str(Path(self.spec.stores).resolve()),
            "domain": self.spec.domain,
            "general": self.general.stream.name if self.general else None,
            "fraction": {
                "requested": self.spec.fraction if self.spec.replay is None else 1 - self.spec.replay,
                "achieved": c.achieved_fraction if self.domain and self.domain.train else 0.0,
                "window": list(c.window),
                "overall": c.domain_samples / max(1, c.samples),
            },
            "samples": c.samples,
            "tokens": c.tokens,
            "samples_per_shard": self.samples_per_shard,
            "shards": self.n_shards,
            "bytes": c.samples * self.sample_bytes,
            "sources": [s.summary() for s in self.sources],
            **({"placed": self.placed_fractions()} if self.spec.extra else {}),
            "warnings": self.warnings,
        }


def open_named_store(stores_dir: Path, name: str) -> Store:
    """open_store, with the next two steps when the store does not exist yet."""
    if not (Path(stores_dir) / name / "store.json").exists():
        from mixer.recipe_catalog import recipes_with_source

        have = ", ".join(s.name for s in list_stores(stores_dir)) or "none"
        default = Path(os.environ.get("MIXER_STORES", "stores")).resolve()
        where = f" --stores {stores_dir}" if Path(stores_dir).resolve() != default else ""
        recipes = recipes_with_source(name)
        if recipes:
            steps = (f"`mixer recipes show {recipes[0]}` says what to download and where to point it, then "
                     f"`mixer tokenize --recipe {recipes[0]}{where}`")
        else:
            steps = (f"`mixer tokenize --source {name} --role domain|general --input FILES --tokenizer "
                     f"tokenizer.json{where}`, or a recipe (`mixer recipes`)")
        raise MixerError(f"{Path(stores_dir) / name / 'store.json'}: no token store named {name!r} in {stores_dir} "
                         f"(stores there: {have}); next: {steps}")
    return open_store(stores_dir, name)


def _pick_general(stores_dir: Path, name: str | None, taken: set[str] = frozenset()) -> Store | None:
    if name is not None:
        return open_named_store(stores_dir, name)
    general = [s for s in list_stores(stores_dir) if s.role == "general" and s.name not in taken]
    if len(general) == 1:
        return general[0]
    if len(general) > 1:
        raise UsageError(f"{stores_dir}: several general stores ({', '.join(s.name for s in general)}); pick one with --general")
    return None


def domain_documents(spec: MixSpec, store: Store) -> np.ndarray | None:
    """The domain train documents a mix draws from: its seeded subset, less those seen by the
    mixes in `exclude_seen_in`; None for the whole train split."""
    docs = None
    if spec.domain_subset_tokens:
        lengths = store.doc_lengths("train")
        order = np.random.default_rng([spec.subset_seed, source_key(store.name), 0x5B5E7]).permutation(len(lengths))
        m = int(np.searchsorted(np.cumsum(lengths[order]), spec.domain_subset_tokens, side="left")) + 1
        docs = np.sort(order[:m])
    for mix_dir in spec.exclude_seen_in:
        seen = seen_documents(Path(mix_dir), store.name)
        base = docs if docs is not None else np.arange(store.n_docs("train"))
        docs = base[~np.isin(base, seen)]
    return docs


def seen_documents(mix_dir: Path, source: str) -> np.ndarray:
    """Store document indices of `source` that any training sample of a built mix touched."""
    plan = plan_from_manifest(load_manifest(mix_dir))
    src = next((s for s in plan.sources if s.stream.name == source and s.train), None)
    if src is None:
        return np.zeros(0, dtype=np.int64)
    full, m, partial, perm = src.stream.prefix(src.stream_tokens)
    # A full epoch touches every document; otherwise the permuted prefix, plus the one cut at the end.
    idx = np.arange(src.stream.n_docs) if full else np.sort(perm[: m + partial])
    return src.stream.documents[idx] if src.stream.documents is not None else idx


def resolve(spec: MixSpec, plan_dir: Path | None = None) -> MixPlan:
    """Open the stores and compute counts, placement and per-source streams. The streams'
    per-document arrays are computed when first needed, into `plan_dir` (a build's
    `.build/plan/`, where they are kept and reused) or a private temporary folder."""
    spec.validate()
    plan_files = PlanDir(plan_dir)
    stores_dir = Path(spec.stores)
    domain_store = open_named_store(stores_dir, spec.domain) if spec.domain else None
    if domain_store is not None and domain_store.role != "domain":
        raise UsageError(f"{domain_store.path}: store {spec.domain!r} has role {domain_store.role!r}, not domain")
    general_store = _pick_general(stores_dir, spec.general, {n for n, _ in spec.extra})
    if general_store is not None and general_store.role != "general":
        raise UsageError(f"{general_store.path}: store {general_store.name!r} has role {general_store.role!r}, not general")
    extra_stores = [open_named_store(stores_dir, n) for n, _ in spec.extra]
    opened = [s for s in (general_store, domain_store, *extra_stores) if s is not None]
    tokenizer = check_same_tokenizer(opened)

    kind = spec.kind
    trains_general = general_store is not None and kind != "finetune"
    fraction = 1 - spec.replay if spec.replay is not None else spec.fraction
    if kind == "pretrain" and spec.domain and spec.fraction is None and spec.epochs is None:
        raise UsageError("give --fraction or --epochs for the domain share")
    if kind != "finetune" and general_store is None:
        raise UsageError(f"{stores_dir}: no general store to mix with; tokenize one (--role general) or give --general")
    if kind == "finetune" and spec.epochs is None:
        raise UsageError("a domain-only (finetune) mix needs --epochs")

    streams: dict[str, SourceStream] = {}
    if domain_store is not None:
        streams["domain"] = SourceStream(domain_store, spec.seed, spec.seq_len, domain_documents(spec, domain_store), plan_files)
        if streams["domain"].epoch_tokens == 0:
            raise MixerError(f"{domain_store.path}: the domain train split is empty")
    if general_store is not None:
        streams["general"] = SourceStream(general_store, spec.seed, spec.seq_len, plan=plan_files)

    domain_tokens = streams["domain"].epoch_tokens if "domain" in streams and fraction != 0 else None
    try:
        counts = solve_counts(
            seq_len=spec.seq_len,
            domain_tokens=domain_tokens,
            has_general=trains_general,
            tokens=spec.tokens,
            fraction=fraction,
            epochs=spec.epochs,
            window=spec.window,
        )
        if counts.samples < 1:
            raise UsageError(f"--tokens {spec.tokens} is below one sample of --seq-len {spec.seq_len}")
        if spec.extra:
            extra = tuple(round(f * counts.window_width) for _, f in spec.extra)
            if counts.general_samples - sum(extra) < 0:
                raise ValueError("--mix: the placed sources leave no room for the general source")
            counts = dataclasses.replace(counts, extra_samples=extra, general_samples=counts.general_samples - sum(extra))
        layout = Layout.make(counts.samples, [counts.domain_samples, *counts.extra_samples], spec.window, spec.seed)
    except ValueError as e:
        raise UsageError(str(e)) from None

    warnings: list[str] = []
    if domain_tokens:
        epochs = counts.stream_tokens(counts.domain_samples) / domain_tokens
        if counts.domain_samples == 0:
            raise UsageError(f"--fraction {spec.fraction} of {counts.samples} samples rounds to no domain sample; raise the fraction or the budget")
        if epochs > spec.max_epochs:
            raise MixerError(
                f"{domain_store.path}: {format_count(domain_tokens)} domain tokens would repeat {epochs:.1f} epochs "
                f"(> --max-epochs {spec.max_epochs:g}, mixer's own limit); lower --fraction, or introduce the domain "
                "late with --window 0.9:1.0 (SCPT)"
            )
    sources: list[SourcePlan] = []
    if "general" in streams:
        sources.append(SourcePlan(len(sources), "general", streams["general"], counts.general_samples if trains_general else 0, trains_general))
        g = sources[-1]
        if g.train and g.stream.epoch_tokens and g.epochs > spec.max_general_epochs:
            raise MixerError(
                f"{g.stream.store.path}: {format_count(g.stream.epoch_tokens)} general tokens would repeat {g.epochs:.1f} "
                f"epochs (> --max-general-epochs {spec.max_general_epochs:g}); a larger general corpus (or fewer "
                "--tokens) is what the budget needs; --max-general-epochs raises the limit")
        if g.train and g.stream.epoch_tokens and g.epochs > 1:
            warnings.append(f"general source {g.stream.name!r} repeats {g.epochs:.2f} epochs: it is smaller than its share of the budget")
    if "domain" in streams:
        sources.append(SourcePlan(len(sources), "domain", streams["domain"], counts.domain_samples, counts.domain_samples > 0))
    for store, (name, f), k in zip(extra_stores, spec.extra, counts.extra_samples):
        if k == 0:
            raise UsageError(f"--mix {name}={f:g} of {counts.window_width} samples rounds to no sample; raise the fraction or the budget")
        src = SourcePlan(len(sources), store.role, SourceStream(store, spec.seed, spec.seq_len, plan=plan_files), k, True)
        if src.stream.epoch_tokens == 0:
            raise MixerError(f"{store.path}: the train split is empty")
        if src.epochs > spec.max_epochs:
            raise MixerError(f"{store.path}: --mix {name}={f:g} would repeat {src.epochs:.1f} epochs (> --max-epochs {spec.max_epochs:g})")
        sources.append(src)
    return MixPlan(spec=spec, counts=counts, layout=layout, sources=sources, tokenizer=tokenizer, warnings=warnings)


def plan_from_manifest(manifest: dict) -> MixPlan:
    return resolve(MixSpec.from_json(manifest["recipe"]))


def spec_digest(spec: MixSpec) -> str:
    return json.dumps(spec.to_json(), sort_keys=True)
