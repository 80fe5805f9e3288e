"""What a mix must hold, from its recipe and its stores alone, by the rules of
docs/formats.md ("Streams and counts"): written again for verify, sharing no code with
mixer/mixing/, so a logic error of the build is caught rather than repeated.

The recipe is a claim like any other: every field of the manifest that a consumer reads
is re-derived from it and the stores, so an edited recipe shows up as a manifest that no
longer follows from it (or, with full verify, as shards that no longer do).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mixer.checks.restream import Stream, subset_documents
from mixer.errors import MixerError
from mixer.formats.mix import load_manifest
from mixer.formats.store import HELDOUT_SPLIT, Store, open_store
from mixer.units import format_count

SHARD_BYTES = 1 << 27  # the default shard size: samples_per_shard = max(1, 2^27 // sample bytes)
_RECIPE = {  # field: (default, kind)
    "stores": (None, "str"), "domain": (None, "name"), "general": (None, "name"), "tokens": (None, "count"),
    "fraction": (None, "real"), "epochs": (None, "real"), "replay": (None, "real"), "seq_len": (2048, "int"),
    "seed": (0, "int"), "window": ([0.0, 1.0], "window"), "max_epochs": (100.0, "real"),
    "samples_per_shard": (None, "count"), "domain_subset_tokens": (None, "count"), "subset_seed": (0, "int"),
    "exclude_seen_in": ([], "paths"), "name": (None, "name"), "extra": ([], "extra"),
    "max_general_epochs": (4.0, "real"),  # left out of the recipe when it is the default
}


@dataclass
class Source:
    id: int
    name: str
    role: str
    store: Store
    stream: Stream
    samples: int
    train: bool

    @property
    def stream_tokens(self) -> int:
        return self.samples * self.stream.seq_len + 1 if self.samples else 0


@dataclass
class Placed:
    source: Source
    requested: float | None
    bound: float  # B: |count in any W consecutive positions - W * achieved| < B


@dataclass
class Expected:
    path: Path
    recipe: dict
    kind: str
    name: str
    samples: int
    w0: int
    w1: int
    sources: list[Source]
    placed: list[Placed]
    dtype: np.dtype
    tokenizer: dict
    stores: str
    general: str | None
    samples_per_shard: int
    warnings: list[tuple[str, str]] = field(default_factory=list)

    @property
    def seq_len(self) -> int:
        return self.recipe["seq_len"]

    @property
    def domain(self) -> Source | None:
        return next((s for s in self.sources if s.name == self.recipe["domain"] and s.role == "domain"), None)

    @property
    def shards(self) -> int:
        return -(-self.samples // self.samples_per_shard)

    def shard_samples(self, k: int) -> int:
        return min(self.samples_per_shard, self.samples - k * self.samples_per_shard)

    def fields(self) -> dict:
        """The manifest's fields that follow from the recipe and the stores (the rest, the
        checksums and per-shard counts, follow from the files and are checked against them)."""
        a, b = self.recipe["window"]
        dom = self.domain
        n_dom = dom.samples if dom is not None else 0
        width = max(1, self.w1 - self.w0)
        requested = self.recipe["fraction"] if self.recipe["replay"] is None else 1 - self.recipe["replay"]
        out = {
            "name": self.name, "kind": self.kind, "seed": self.recipe["seed"], "seq_len": self.seq_len,
            "dtype": self.dtype.str, "tokenizer": self.tokenizer, "stores": self.stores,
            "domain": self.recipe["domain"], "general": self.general,
            "fraction": {"requested": requested, "achieved": n_dom / width if dom is not None and dom.train else 0.0,
                         "window": [a, b], "overall": n_dom / max(1, self.samples)},
            "samples": self.samples, "tokens": self.samples * self.seq_len,
            "samples_per_shard": self.samples_per_shard,
            "bytes": self.samples * (self.seq_len + 1) * self.dtype.itemsize,
            "sources": [self._source_fields(s) for s in self.sources],
        }
        if self.recipe["extra"]:
            out["placed"] = [{"source": p.source.name, "id": p.source.id, "requested": p.requested,
                              "achieved": p.source.samples / width, "window_bound": round(p.bound, 9)}
                             for p in self.placed]
        return out

    def _source_fields(self, s: Source) -> dict:
        hist, cut = s.stream.histogram(s.stream_tokens)
        return {
            "id": s.id, "name": s.name, "role": s.role, "store": str(Path(self.stores) / s.store.path.name),
            "train_tokens": s.stream.epoch_tokens, "train_documents": s.stream.n_docs,
            "documents": "subset" if s.stream.documents is not None else "all", "samples": s.samples,
            "stream_tokens": s.stream_tokens, "epochs": round(s.stream_tokens / max(1, s.stream.epoch_tokens), 6),
            "documents_full_passes": hist, "partial_documents": cut,
            "epoch_start_samples": s.stream.epoch_starts(s.samples),
        }

    def eval_sets(self) -> list[tuple[Source, str]]:
        """(source, held-out split) of every eval set, in manifest order."""
        return [(s, HELDOUT_SPLIT[s.store.role]) for s in self.sources if HELDOUT_SPLIT.get(s.store.role) in s.store.splits]


def _recipe(raw: object, where: str) -> dict:
    """The recipe's fields, type-checked (defaults for keys older mixes do not write)."""
    if not isinstance(raw, dict):
        raise MixerError(f"{where}: recipe is not an object")
    unknown = set(raw) - set(_RECIPE)
    if unknown:
        raise MixerError(f"{where}: recipe has unknown fields {sorted(unknown)}")
    out = {}
    for key, (default, kind) in _RECIPE.items():
        v = raw.get(key, default)
        bad = False
        if v is None:
            bad = kind in ("int", "str", "window", "paths", "extra")
        elif kind == "int":
            bad = not isinstance(v, int) or isinstance(v, bool) or v < 0
        elif kind == "count":
            bad = not isinstance(v, int) or isinstance(v, bool) or v < 1
        elif kind == "real":
            bad = not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v)
        elif kind in ("str", "name"):
            bad = not isinstance(v, str) or not v
        elif kind == "window":
            bad = (not isinstance(v, list) or len(v) != 2 or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)
                   or not 0 <= v[0] < v[1] <= 1)
        elif kind == "paths":
            bad = not isinstance(v, list) or not all(isinstance(x, str) for x in v)
        elif kind == "extra":
            bad = not isinstance(v, list) or not all(
                isinstance(x, list) and len(x) == 2 and isinstance(x[0], str) and isinstance(x[1], (int, float))
                and not isinstance(x[1], bool) and 0 < x[1] < 1 for x in v)
        if bad:
            raise MixerError(f"{where}: recipe.{key} = {v!r} is not a valid value")
        out[key] = v
    if out["seq_len"] < 1 or not out["max_epochs"] > 0 or not out["max_general_epochs"] > 0:
        raise MixerError(f"{where}: recipe.seq_len must be at least 1, max_epochs and max_general_epochs positive")
    return out


def kind_of(r: dict) -> str:
    if r["replay"] is not None:
        return "replay"
    if r["domain"] is not None and r["fraction"] is None and r["tokens"] is None:
        return "finetune"
    return "pretrain"


def default_name(r: dict, kind: str) -> str:
    """The mix's name when the recipe gives none."""
    if r["name"]:
        return r["name"]
    if kind == "finetune":
        return f"{r['domain']}-ft-e{r['epochs']:g}"
    if kind == "replay":
        return f"{r['domain']}-replay{r['replay']:g}-e{r['epochs']:g}"
    tok = format_count(r["tokens"] or 0)
    if not r["domain"] or r["fraction"] == 0:
        return f"npt-{tok}"
    a, b = r["window"]
    win = "" if (a, b) == (0.0, 1.0) else f"-w{a:g}-{b:g}"
    share = f"f{r['fraction']:g}" if r["fraction"] is not None else f"e{r['epochs']:g}"
    more = "".join(f"+{n}-f{f:g}" for n, f in r["extra"])
    return f"{r['domain']}-{share}{more}{win}-{tok}"


def solve(r: dict, domain_tokens: int | None, has_general: bool) -> tuple[int, int]:
    """(samples of the mix, samples of the domain): two of tokens, fraction, epochs fix the third.

    Python's round (half to even) throughout, as documented."""
    L, (a, b) = r["seq_len"], r["window"]
    fraction = 1 - r["replay"] if r["replay"] is not None else r["fraction"]
    if not has_general:
        fraction = 1.0
    if domain_tokens is None:
        if r["tokens"] is None:
            raise ValueError("a mix without a domain needs tokens")
        return r["tokens"] // L, 0
    if r["epochs"] is not None:
        n_domain = max(0, round((r["epochs"] * domain_tokens - 1) / L))
        if r["tokens"] is not None:
            return r["tokens"] // L, n_domain
        if fraction is None:
            raise ValueError("epochs need tokens or a fraction to size the mix")
        return round(n_domain / (fraction * (b - a))), n_domain
    if fraction is None or r["tokens"] is None:
        raise ValueError("give two of tokens, fraction, epochs")
    n = r["tokens"] // L
    return n, round(fraction * (round(b * n) - round(a * n)))


def _stores_dir(recipe_stores: str, claimed: object, where: str) -> Path:
    if not isinstance(claimed, str):
        raise MixerError(f"{where}: stores is not a path")
    p = Path(os.path.normpath(recipe_stores))
    if p.is_absolute():
        if str(p.resolve()) != claimed:
            raise MixerError(f"{where}: stores is {claimed}, the recipe's stores {recipe_stores}")
    elif p.parts and ".." not in p.parts and Path(claimed).parts[-len(p.parts):] != p.parts:
        # relative to wherever the build ran: only its tail can be checked
        raise MixerError(f"{where}: stores is {claimed}, which is not the recipe's stores {recipe_stores}")
    return Path(claimed)


def _open(stores: Path, name: str) -> Store:
    store = open_store(stores, name)
    if "train" not in store.meta.get("splits", {}):
        raise MixerError(f"{store.path}: store has no train split")
    return store


def expected_mix(manifest: dict, mix: Path, visiting: frozenset[str] = frozenset()) -> Expected:
    """Re-derive the mix a manifest's recipe describes, from the stores."""
    try:
        return _expected_mix(manifest, mix, visiting)
    except (TypeError, ValueError, KeyError, IndexError, ZeroDivisionError, OverflowError) as e:
        # a recipe no build could have run (the checks above name the usual ones)
        raise MixerError(f"{mix / 'manifest.json'}: the recipe does not describe a mix ({type(e).__name__}: {e})") from None


def _expected_mix(manifest: dict, mix: Path, visiting: frozenset[str]) -> Expected:
    where = f"{mix / 'manifest.json'}"
    if str(mix.resolve()) in visiting:
        raise MixerError(f"{where}: excludes documents of a mix that depends on it (a cycle)")
    r = _recipe(manifest.get("recipe"), where)
    kind = kind_of(r)
    stores = _stores_dir(r["stores"], manifest.get("stores"), where)
    general = r["general"] if r["general"] is not None else manifest.get("general")
    if general is not None and not isinstance(general, str):
        raise MixerError(f"{where}: general is not a store name")
    if kind != "finetune" and general is None:
        raise MixerError(f"{where}: a {kind} mix needs a general source; the manifest names none")
    if r["domain"] is None and general is None:
        raise MixerError(f"{where}: recipe names neither a domain nor a general store")
    names = [r["domain"]] + [n for n, _ in r["extra"]]
    if len(set(names)) != len(names) or general in names:
        raise MixerError(f"{where}: recipe names a source twice")
    if r["extra"] and (r["domain"] is None or r["fraction"] is None or r["replay"] is not None
                       or r["fraction"] + sum(f for _, f in r["extra"]) >= 1):
        raise MixerError(f"{where}: recipe.extra needs a pretraining mix whose fractions add up to less than 1")
    if kind in ("finetune", "replay") and r["epochs"] is None:
        raise MixerError(f"{where}: a {kind} recipe needs epochs")
    if r["fraction"] is not None and not 0 <= r["fraction"] < 1 or r["replay"] is not None and (
            not 0 < r["replay"] < 1 or r["fraction"] is not None) or r["epochs"] is not None and r["epochs"] <= 0:
        raise MixerError(f"{where}: recipe fraction, replay or epochs out of range")

    opened: list[tuple[str, Store]] = []
    if general is not None:
        g = _open(stores, general)
        if g.role != "general":
            raise MixerError(f"{g.path}: store {general!r} has role {g.role!r}, not general")
        opened.append(("general", g))
    if r["domain"] is not None:
        d = _open(stores, r["domain"])
        if d.role != "domain":
            raise MixerError(f"{d.path}: store {r['domain']!r} has role {d.role!r}, not domain")
        opened.append(("domain", d))
    opened += [(None, _open(stores, n)) for n, _ in r["extra"]]
    first = opened[0][1]
    for _, s in opened[1:]:
        if s.tokenizer.get("sha256") != first.tokenizer.get("sha256") or s.dtype != first.dtype:
            raise MixerError(f"{s.path}: tokenizer or dtype differs from {first.path}'s; one mix cannot hold both")

    seed, L = r["seed"], r["seq_len"]
    streams = {}
    for role, store in opened:
        docs = _domain_documents(r, store, mix, visiting) if role == "domain" else None
        streams[store.name] = Stream(store, seed, L, docs)
        if role != "general" and streams[store.name].epoch_tokens == 0:
            raise MixerError(f"{store.path}: the train split is empty")
    fraction = 1 - r["replay"] if r["replay"] is not None else r["fraction"]
    trains_general = general is not None and kind != "finetune"
    dom_stream = streams[opened[1 if general else 0][1].name] if r["domain"] is not None else None
    domain_tokens = dom_stream.epoch_tokens if dom_stream is not None and fraction != 0 else None
    try:
        n, n_domain = solve(r, domain_tokens, trains_general)
    except (ValueError, ZeroDivisionError, OverflowError) as e:
        raise MixerError(f"{where}: the recipe does not size a mix ({e})") from None
    a, b = r["window"]
    w0, w1 = round(a * n), round(b * n)
    width = w1 - w0
    extra = [round(f * width) for _, f in r["extra"]]
    n_general = n - n_domain - sum(extra)
    if n < 1 or n_domain > width or n_general < 0 or any(k == 0 for k in extra):
        raise MixerError(f"{where}: the recipe asks for an impossible mix ({n} samples, {n_domain} domain, "
                         f"placed {extra} in a window of {width})")
    if domain_tokens and n_domain == 0:
        raise MixerError(f"{where}: the recipe's domain share rounds to no sample")

    sources: list[Source] = []
    wanted = iter(([n_general if trains_general else 0] if general is not None else [])
                  + ([n_domain] if r["domain"] is not None else []) + extra)
    for (role, store), k in zip(opened, wanted):
        src = Source(len(sources), store.name, role or store.role, store, streams[store.name], k,
                     trains_general if role == "general" else k > 0)
        # (max_general_epochs is not re-checked: mixes built before it existed repeat general data
        # beyond its default, and the field is left out of a recipe at its default)
        if role != "general" and src.samples and src.stream_tokens / src.stream.epoch_tokens > r["max_epochs"]:
            raise MixerError(f"{where}: {store.name} repeats {src.stream_tokens / src.stream.epoch_tokens:.1f} epochs, "
                             f"more than the recipe's max_epochs {r['max_epochs']:g}")
        sources.append(src)

    placed, bounds, free = [], [], width
    by_name = {s.name: s for s in sources}
    for name, req, k in [(r["domain"], fraction, n_domain)] + [(nm, f, k) for (nm, f), k in zip(r["extra"], extra)]:
        rate = k / free if free else 0.0
        bounds.append(1.0 + rate * sum(bounds))
        free -= k
        if name is not None:
            placed.append(Placed(by_name[name], req, bounds[-1]))

    warnings = []  # (source, what the warning must say): its words are for people, its numbers are checked
    g = sources[0] if general is not None else None
    if g is not None and g.train and g.stream.epoch_tokens and g.stream_tokens / g.stream.epoch_tokens > 1:
        warnings.append((g.name, f"{g.stream_tokens / g.stream.epoch_tokens:.2f} epochs"))
    L_bytes = (L + 1) * first.dtype.itemsize
    return Expected(path=mix, recipe=r, kind=kind, name=default_name(r, kind), samples=n, w0=w0, w1=w1,
                    sources=sources, placed=placed, dtype=first.dtype, tokenizer=first.tokenizer, stores=str(stores),
                    general=general, samples_per_shard=r["samples_per_shard"] or max(1, SHARD_BYTES // L_bytes),
                    warnings=warnings)


def _domain_documents(r: dict, store: Store, mix: Path, visiting: frozenset[str]) -> np.ndarray | None:
    """The domain's stream documents: a seeded subset, less those earlier mixes touched."""
    docs = None
    if r["domain_subset_tokens"]:
        lengths = np.diff(np.asarray(store.doc_ends("train")).astype(np.int64), prepend=0)
        docs = subset_documents(lengths, r["subset_seed"], store.name, r["domain_subset_tokens"])
    for other in r["exclude_seen_in"]:
        seen = touched_documents(Path(other), store.name, visiting | {str(mix.resolve())})
        base = docs if docs is not None else np.arange(store.n_docs("train"))
        docs = base[~np.isin(base, seen)]
    return docs


def touched_documents(mix: Path, source: str, visiting: frozenset[str] = frozenset()) -> np.ndarray:
    """Store indices of `source`'s documents that any training sample of the mix touches,
    re-derived from that mix's recipe (verify that mix too: this trusts its recipe)."""
    exp = expected_mix(load_manifest(mix), mix, visiting)
    src = next((s for s in exp.sources if s.name == source and s.train), None)
    if src is None:
        return np.zeros(0, np.int64)
    return src.stream.touched(src.stream_tokens)


def document_passes(exp: Expected, source: str) -> np.ndarray | None:
    """Full passes per store document of the domain-role source `source`, or None if absent."""
    src = next((s for s in exp.sources if s.name == source and s.role == "domain"), None)
    if src is None:
        return None
    out = np.zeros(src.store.n_docs("train"), np.int64)
    mine = src.stream.passes(src.stream_tokens)
    if src.stream.documents is not None:
        out[src.stream.documents] += mine
    else:
        out += mine
    return out
