"""The tiktoken fast path: a byte-level BPE tokenizer.json encoded by `tiktoken`, same ids as HF.

`tiktoken` encodes GPT-2-style byte-level BPE about 2.5-3x faster than HF `tokenizers`
(`encode_batch_fast`, same cores; docs/benchmarks/tokenize.md). It cannot read a
tokenizer.json, and its algorithm is not HF's in general, so `tiktoken_spec` translates
a tokenizer.json only when every difference between the two is ruled out, and refuses
(naming the reason) otherwise; the caller then uses HF. The differences, and the check
that rules each out:

- Pre-tokenization. tiktoken splits with one regex and drops text no alternative matches;
  HF may normalize, prepend a space, chain splitters, keep unmatched gaps. Accepted: no
  normalizer (or an empty sequence), and either `ByteLevel(add_prefix_space=False,
  use_regex=True)` (GPT-2's built-in regex) or `Split(Regex, Isolated)` then
  `ByteLevel(add_prefix_space=False, use_regex=False)` (Llama-3 / OLMo-2), with a regex
  from VERIFIED_PATTERNS: patterns whose alternatives match every character (so nothing
  is dropped) and that tests/ingest/test_tiktoken.py checks against HF on every Unicode
  code point (HF's regex engine is Oniguruma, tiktoken's fancy-regex). Truncation or
  padding in the file is refused (HF would apply it).
- Merge priority. HF merges the adjacent pair with the lowest rank in the merge list;
  tiktoken the adjacent pair whose concatenation has the lowest rank. Ranks are given
  so that they agree: a token's rank orders it as its first merge does. A token that
  several merges produce must have them adjacent in the list, duplicate pairs are
  refused, and every non-byte token must be the product of a merge.
- Which pairs merge. tiktoken joins *any* two adjacent tokens whose concatenation is a
  token; HF only the listed pairs. So each token must be either "complete" (every split
  of it into two tokens is one of its merges: how transformers converts tiktoken files,
  Llama-3 and OLMo-2) or "consistent" (HF's merges turn its own bytes into it, checked
  by encoding every such token with HF: true of merge lists that BPE training wrote,
  such as GPT-2's; a hand-made list like (a b), (b c), (a bc) fails, since HF leaves
  "abc" as [ab, c] and tiktoken joins those two).
- Whole words. tiktoken returns a word that is itself a token without merging; HF does
  too with `ignore_merges`, and otherwise every token must be consistent.
- Ids. tiktoken's rank is its output id. When the vocabulary's ids do not follow merge
  order, ranks are assigned and mapped back to HF ids (`TiktokenSpec.to_hf`).
- Added tokens. HF splits every added token out of the text (special or not, with
  `add_special_tokens=False` too); here they are tiktoken special tokens, all allowed.
  Refused: lstrip/rstrip/single_word, a content that is a prefix of another (HF takes
  the longest match, tiktoken the first alternative), normalized and unnormalized added
  tokens whose contents overlap (HF splits in two passes), and added tokens that take
  part in merges.

What the checks cannot prove, tests and the run check: the tokenizer step re-encodes a
seeded sample of every task's documents with HF and stops if any differ.
"""

from __future__ import annotations

import functools
import json
import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from mixer.errors import UsageError
from mixer.forks import pool_threads

if TYPE_CHECKING:
    from tokenizers import Tokenizer

BACKENDS = ("auto", "hf", "tiktoken")

# HF's ByteLevel regex (use_regex=True), character for character
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# Llama-3's Split regex; OLMo-2 and cl100k-converted tokenizer.json files use the same string
LLAMA3_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
# every character falls in \s, \p{L}, \p{N} or their complement, each matched by an
# alternative; HF and tiktoken agree on every code point (tests/ingest/test_tiktoken.py)
VERIFIED_PATTERNS = {GPT2_PATTERN: "GPT-2", LLAMA3_PATTERN: "Llama-3"}


class NotExpressible(Exception):
    """The tokenizer.json has a feature tiktoken cannot reproduce exactly; str() says which."""


def _byte_alphabet() -> dict[str, int]:
    """ByteLevel's printable stand-in character for each byte (GPT-2's bytes_to_unicode), inverted."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = {b: chr(b) for b in keep}
    extra = 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + extra)
            extra += 1
    return {c: b for b, c in chars.items()}


BYTE_OF = _byte_alphabet()
_TO_LATIN1 = {ord(c): b for c, b in BYTE_OF.items()}  # str.translate: stand-ins -> chr(byte)
_NOT_ALPHABET = re.compile("[^" + "".join(re.escape(c) for c in BYTE_OF) + "]")


def token_bytes(token: str) -> bytes | None:
    """The bytes a ByteLevel vocabulary entry stands for; None if it holds other characters."""
    if _NOT_ALPHABET.search(token):
        return None
    return token.translate(_TO_LATIN1).encode("latin-1")


@dataclass(frozen=True)
class TiktokenSpec:
    """What `tiktoken.Encoding` needs, and how its ids map to the tokenizer.json's."""

    pattern: str
    pattern_name: str
    mergeable_ranks: dict[bytes, int]
    special_tokens: dict[str, int]
    to_hf: np.ndarray | None  # tiktoken id -> HF id; None when they are the same

    def describe(self) -> str:
        ids = "ids remapped" if self.to_hf is not None else "same ids"
        return f"byte-level BPE, {self.pattern_name} split pattern, {len(self.mergeable_ranks):,} tokens, {ids}"


def _pattern(data: dict) -> tuple[str, str]:
    """(regex, name) tiktoken should split with, if the normalizer and pre-tokenizer allow one."""
    norm = data.get("normalizer")
    if norm is not None and not (norm.get("type") == "Sequence" and not norm.get("normalizers")):
        raise NotExpressible(f"normalizer {norm.get('type')}")
    pre = data.get("pre_tokenizer")
    steps = pre.get("pretokenizers", []) if pre and pre.get("type") == "Sequence" else [pre]
    if not steps or steps[-1] is None or steps[-1].get("type") != "ByteLevel":
        names = "+".join(str(s.get("type")) if s else "none" for s in steps) or "none"
        raise NotExpressible(f"pre-tokenizer {names} (not byte-level)")
    byte_level = steps[-1]
    if byte_level.get("add_prefix_space", False):
        raise NotExpressible("ByteLevel add_prefix_space=true")
    use_regex = byte_level.get("use_regex", True)
    if len(steps) == 1:
        if not use_regex:
            raise NotExpressible("ByteLevel without a split regex (whole documents as one word)")
        return GPT2_PATTERN, VERIFIED_PATTERNS[GPT2_PATTERN]
    if len(steps) != 2 or steps[0].get("type") != "Split":
        raise NotExpressible("pre-tokenizer " + "+".join(str(s.get("type")) for s in steps))
    split = steps[0]
    regex = (split.get("pattern") or {}).get("Regex")
    if regex is None or split.get("behavior") != "Isolated" or split.get("invert"):
        raise NotExpressible("Split pre-tokenizer other than an isolated regex")
    if use_regex:
        raise NotExpressible("Split followed by ByteLevel's own regex (two splitting passes)")
    if regex not in VERIFIED_PATTERNS:
        raise NotExpressible("Split regex not among the patterns verified against HF (GPT-2, Llama-3)")
    return regex, VERIFIED_PATTERNS[regex]


def _added_tokens(data: dict, vocab: dict[str, int]) -> dict[str, int]:
    added = data.get("added_tokens") or []
    specials: dict[str, int] = {}
    for t in added:
        c = t["content"]
        if t.get("lstrip") or t.get("rstrip") or t.get("single_word"):
            raise NotExpressible(f"added token {c!r} with lstrip/rstrip/single_word")
        if not c or c in specials:
            raise NotExpressible(f"added token {c!r} empty or listed twice")
        specials[c] = int(t["id"])
    by_id = {i: k for k, i in vocab.items()}
    for c, i in specials.items():
        key = by_id.get(i)
        if key is not None and key != c and token_bytes(key) != c.encode("utf-8"):
            raise NotExpressible(f"added token {c!r} shares id {i} with vocabulary entry {key!r}")
    contents = sorted(specials)
    for a, b in zip(contents, contents[1:]):
        if b.startswith(a):
            raise NotExpressible(f"added token {a!r} is a prefix of {b!r}")
    groups = [[t["content"] for t in added if bool(t.get("normalized", True)) is flag] for flag in (False, True)]
    for a in groups[0]:
        for b in groups[1]:
            if a in b or b in a or any(a.endswith(b[:k]) or b.endswith(a[:k]) for k in range(1, min(len(a), len(b)))):
                raise NotExpressible(f"added tokens {a!r} and {b!r} overlap and are split in different passes")
    return specials


def tiktoken_spec(data: dict, merges_only: "Callable[[], Tokenizer] | None" = None) -> TiktokenSpec:
    """Translate a parsed tokenizer.json; raise NotExpressible(reason) unless every difference is ruled out.

    `merges_only` loads the same tokenizer in HF with `ignore_merges` off; it is called
    (once) when some token must be checked for consistency (see the module doc).
    """
    for key in ("truncation", "padding"):
        if data.get(key):
            raise NotExpressible(f"{key} is set")
    model = data.get("model") or {}
    if model.get("type") != "BPE":
        raise NotExpressible(f"{model.get('type')} model (not BPE)")
    if model.get("dropout") or model.get("byte_fallback") or model.get("continuing_subword_prefix") or model.get(
        "end_of_word_suffix"
    ):
        raise NotExpressible("BPE with dropout, byte_fallback or subword prefix/suffix")
    pattern, pattern_name = _pattern(data)
    vocab: dict[str, int] = model["vocab"]
    if len(set(vocab.values())) != len(vocab):
        raise NotExpressible("two vocabulary entries share an id")
    specials = _added_tokens(data, vocab)
    special_ids = set(specials.values())

    for byte_char in BYTE_OF:
        if byte_char not in vocab or vocab[byte_char] in special_ids:
            raise NotExpressible(f"byte {BYTE_OF[byte_char]} has no token")
    first: dict[str, int] = {}  # token -> index of the first merge that makes it
    seen_pairs: set[tuple[str, str]] = set()  # every merge: pairs of one token are adjacent, so this is per token too
    previous = None
    for i, merge in enumerate(model["merges"]):
        pair = merge.split(" ") if isinstance(merge, str) else list(merge)
        if len(pair) != 2:
            raise NotExpressible(f"merge {i} {merge!r} is not a pair")
        a, b = pair
        made = a + b
        if a not in vocab or b not in vocab or made not in vocab:
            raise NotExpressible(f"merge {i} ({a!r}, {b!r}) uses a token not in the vocabulary")
        if vocab[a] in special_ids or vocab[b] in special_ids or vocab[made] in special_ids:
            raise NotExpressible(f"merge {i} ({a!r}, {b!r}) involves an added token")
        if (a, b) in seen_pairs:
            raise NotExpressible(f"merge {i} ({a!r}, {b!r}) is listed twice")
        seen_pairs.add((a, b))
        if made in first and previous != made:
            raise NotExpressible(f"token {made!r} is made by merges {first[made]} and {i}, not adjacent")
        first.setdefault(made, i)
        previous = made

    unmade = [k for k, i in vocab.items() if k not in first and k not in BYTE_OF and i not in special_ids]
    if unmade:
        raise NotExpressible(f"{len(unmade)} vocabulary tokens are made by no merge (e.g. {unmade[0]!r})")
    order = sorted(first, key=first.__getitem__)  # merge products in priority order
    product_bytes = [token_bytes(t) for t in order]
    if any(b is None for b in product_bytes):
        raise NotExpressible("a merged token holds characters outside the byte alphabet")

    whole_words = bool(model.get("ignore_merges", False))
    mergeable = {t for t in first} | set(BYTE_OF)

    def complete(t: str) -> bool:
        return all((t[:k], t[k:]) in seen_pairs for k in range(1, len(t)) if t[:k] in mergeable and t[k:] in mergeable)

    check = [t for t in order if not (whole_words and complete(t))]
    if check:
        if merges_only is None:
            raise NotExpressible("cannot check tokens against HF's merges (no HF tokenizer given)")
        bpe = merges_only().model
        for t in check:
            got = [x.id for x in bpe.tokenize(t)]
            if got != [vocab[t]]:
                raise NotExpressible(f"token {t!r} is not what HF's merges make of its bytes ({got}), and not "
                                     "every split of it is a merge")

    ids = np.array([vocab[t] for t in order], dtype=np.int64)
    base = sorted(BYTE_OF, key=BYTE_OF.__getitem__)
    if np.all(np.diff(ids) > 0):  # ids follow merge order: HF ids serve as ranks
        ranks = {bytes([BYTE_OF[c]]): vocab[c] for c in base}
        ranks.update(zip(product_bytes, ids.tolist()))  # type: ignore[arg-type]
        return TiktokenSpec(pattern, pattern_name, ranks, specials, None)
    ranks = {bytes([BYTE_OF[c]]): r for r, c in enumerate(base)}
    ranks.update((b, 256 + r) for r, b in enumerate(product_bytes))  # type: ignore[misc]
    to_hf = np.concatenate([[vocab[c] for c in base], ids, list(specials.values())]).astype(np.uint32)
    first_special = 256 + len(order)
    return TiktokenSpec(pattern, pattern_name, ranks, {c: first_special + k for k, c in enumerate(specials)}, to_hf)


@dataclass(frozen=True)
class BackendChoice:
    backend: str  # hf | tiktoken
    requested: str  # auto | hf | tiktoken
    reason: str

    def to_dict(self) -> dict:
        return {"used": self.backend, "requested": self.requested, "reason": self.reason}


def load_spec(path: str | os.PathLike) -> TiktokenSpec:
    """Read a tokenizer.json and translate it (NotExpressible if it cannot be).

    Kept per process while the file is unchanged: with one local worker the parent's
    choice and the task's encoder read the same file in one process (~0.3 s for GPT-2).
    """
    st = os.stat(path)
    return _load_spec(os.path.realpath(path), st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=4)
def _load_spec(path: str, mtime_ns: int, size: int) -> TiktokenSpec:
    from tokenizers import Tokenizer

    text = Path(path).read_text(encoding="utf-8")
    data = json.loads(text)

    def merges_only() -> Tokenizer:
        if not (data.get("model") or {}).get("ignore_merges"):
            return Tokenizer.from_str(text)
        return Tokenizer.from_str(json.dumps(data | {"model": data["model"] | {"ignore_merges": False}}))

    return tiktoken_spec(data, merges_only)


def choose_backend(path: str | os.PathLike, requested: str, flag: str = "--tokenizer-backend") -> BackendChoice:
    """Which library tokenizes: tiktoken where it gives HF's ids (auto; see the module doc), else HF."""
    if requested not in BACKENDS:
        raise UsageError(f"{flag} {requested}: use {', '.join(BACKENDS)}")
    if requested == "hf":
        return BackendChoice("hf", requested, f"{flag} hf")
    try:
        import tiktoken  # noqa: F401
    except ImportError:
        if requested == "tiktoken":
            raise UsageError(f"{flag} tiktoken: tiktoken is not installed (pip install tiktoken)") from None
        return BackendChoice("hf", requested, "tiktoken is not installed")
    try:
        spec = load_spec(path)
    except NotExpressible as e:
        if requested == "tiktoken":
            raise UsageError(f"{flag} tiktoken: {path} cannot be reproduced exactly by tiktoken ({e}); "
                             "use auto or hf") from None
        return BackendChoice("hf", requested, f"not expressible in tiktoken: {e}")
    return BackendChoice("tiktoken", requested, spec.describe())


class TiktokenEncoder:
    """Encode batches with tiktoken on `threads` threads; returns HF ids.

    tiktoken's Rust encoder releases the GIL but has no batch call of its own; its
    Python `encode_batch` maps one future per text over a fresh thread pool and returns
    lists of Python ints. Here the threads are started once per process (`_pool`), and
    `encode_with_eos` hands a whole share of a batch to Rust in one call (see there), so
    a short document costs no Python of its own.
    """

    def __init__(self, spec: TiktokenSpec, threads: int, eos_id: int | None = None) -> None:
        import tiktoken

        enc = tiktoken.Encoding(
            "mixer", pat_str=spec.pattern, mergeable_ranks=spec.mergeable_ranks, special_tokens=spec.special_tokens
        )
        self._core = enc._core_bpe  # the Rust encoder: Encoding.encode would silently replace lone surrogates
        self._allowed = set(spec.special_tokens)
        self.to_hf = spec.to_hf
        self.threads = max(1, threads)
        # The separator of joined encoding: the added token whose id is EOS, when there is one
        # and it cannot overlap itself (see encode_with_eos); None: one call per document.
        self._sep = self._sep_rank = self._others = None
        for content, rank in spec.special_tokens.items():
            hf = int(spec.to_hf[rank]) if spec.to_hf is not None else rank
            if eos_id is not None and hf == eos_id and not _overlaps_itself(content):
                self._sep, self._sep_rank = content, rank
        if self._sep is not None:
            others = sorted((c for c in spec.special_tokens if c != self._sep), key=len, reverse=True)
            self._others = re.compile("|".join(map(re.escape, others))) if others else None

    def _pool(self) -> ThreadPoolExecutor:
        return _pool(self.threads)

    def encode(self, texts: list[str]) -> list[np.ndarray]:
        """HF ids of each text, one uint32 array per text: one Rust call per text."""
        out: list[np.ndarray] = [None] * len(texts)  # type: ignore[list-item]
        todo = iter(range(len(texts)))  # next() on it is atomic under the GIL
        core, allowed, to_hf = self._core, self._allowed, self.to_hf

        def work() -> None:
            for i in todo:
                # a uint32 buffer straight from Rust: no Python int per token
                ids = np.frombuffer(core.encode_to_tiktoken_buffer(texts[i], allowed), dtype=np.uint32)
                out[i] = ids if to_hf is None else to_hf[ids]

        # the pool's threads pull texts from a shared counter, so a long document does not
        # hold up a whole share of the batch
        for f in [self._pool().submit(work) for _ in range(min(self.threads, len(texts)))]:
            f.result()
        return out

    def encode_with_eos(self, texts: list[str], dtype: np.dtype) -> tuple[np.ndarray, np.ndarray] | None:
        """The ids of every text with EOS after each, flat (dtype), and each text's length
        with its EOS; None where joined encoding cannot be shown exact (the caller then
        encodes text by text).

        Joined encoding: each thread's share of the batch is one string, the texts with the
        EOS token's text after each, encoded in one Rust call. tiktoken cuts its input at
        allowed special tokens and runs the split regex on each piece between them alone
        (`_encode_native`: `regex.find_iter(&text[start..end])`), so the result is every
        text's own ids followed by EOS, as long as the special tokens found are exactly the
        separators. Checked per batch: the separator occurs exactly once per text (it cannot
        overlap itself, so no occurrence can straddle a boundary unseen), and no other added
        token occurs anywhere; a text that holds one is encoded alone, as before.
        """
        if self._sep is None or not texts:
            return None
        shares = _shares(texts, self.threads)
        joined = [self._sep.join(texts[a:b]) + self._sep for a, b in shares]
        if sum(j.count(self._sep) for j in joined) != len(texts) or (
                self._others is not None and any(self._others.search(j) for j in joined)):
            return None
        core, allowed = self._core, self._allowed
        parts = list(self._pool().map(lambda j: np.frombuffer(core.encode_to_tiktoken_buffer(j, allowed),
                                                              dtype=np.uint32), joined))
        ids = parts[0] if len(parts) == 1 else np.concatenate(parts)
        ends = np.flatnonzero(ids == self._sep_rank)
        if len(ends) != len(texts):  # cannot happen after the checks above; never guess
            return None
        # the separator's HF id is eos_id: __init__ chose it so
        tokens = (ids if self.to_hf is None else self.to_hf[ids]).astype(dtype, copy=False)
        return tokens, np.diff(ends, prepend=-1)


def _overlaps_itself(s: str) -> bool:
    """Whether a proper prefix of `s` is also a suffix of it (then two occurrences can overlap)."""
    return any(s[:k] == s[-k:] for k in range(1, len(s)))


def _shares(texts: list[str], threads: int) -> list[tuple[int, int]]:
    """Contiguous ranges of `texts` of about equal characters, a few per thread (a thread
    that finishes early takes the next)."""
    n = len(texts)
    parts = min(n, 4 * threads if threads > 1 else 1)
    if parts <= 1:
        return [(0, n)]
    cum = np.cumsum(np.fromiter(map(len, texts), dtype=np.int64, count=n))
    cuts = np.searchsorted(cum, cum[-1] * np.arange(1, parts) / parts, side="right")
    bounds = np.unique(np.r_[0, cuts, n])
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


_POOLS: dict[tuple[int, int], ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()


def _pool(threads: int) -> ThreadPoolExecutor:
    """Encoding threads, started once per process and thread count (a forked child starts its own)."""
    key = (os.getpid(), threads)
    with _POOLS_LOCK:
        pool = _POOLS.get(key)
        if pool is None:
            pool = _POOLS[key] = ThreadPoolExecutor(max_workers=threads, thread_name_prefix=pool_threads("tiktoken"))
        return pool
