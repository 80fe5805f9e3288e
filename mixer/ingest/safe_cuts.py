"""Where a long document can be cut so that encoding the pieces gives exactly its tokens.

While it encodes, HF `tokenizers` holds ~150 bytes per character (per-byte alignments of
every normalized piece, a String and offsets per token): one 50 MB document took 7.3 GB
and 45 s (docs/benchmarks/tokenize_merge.md). Encoding it in pieces of ~PIECE characters
bounds that, and gives the same ids when the cut cannot change anything in the pipeline.

A cut is put before a separator `text[c]`, a space or a line break, between two letters
or digits (`str.isalnum`) that no Unicode normalization changes. Why the ids of the two
sides, concatenated, are those of the whole (`encode(..., add_special_tokens=False)`):

- added tokens are matched first, on the raw or the normalized text: a match across
  the cut would contain the separator, and no added token here does (nor strips
  whitespace around it: `lstrip`/`rstrip` are off);
- the normalizer is none, NFC, NFD, NFKC, NFKD or Lowercase (or a Sequence of them):
  they map the separator to itself, cannot compose anything with it, and leave the
  NFKD-invariant neighbours letters or digits;
- the first pre-tokenizer splits at the cut, and reads nothing across it: Whitespace,
  WhitespaceSplit and BertPreTokenizer drop the separator between two pieces; GPT-2's
  byte-level regex (`ByteLevel`, `use_regex`, no prefix space) and the `Split` patterns
  of KNOWN_PATTERNS end the letter/digit run before the separator (no alternative
  crosses a space or line break into a letter or digit), start the next match at the
  separator (a space joins the following letters, ` ?\\p{L}+`; a line break followed by
  a letter or digit is a piece of its own: `\\s+(?!\\S)` fails, `\\s+` or `\\s*[\\r\\n]+`
  takes it), and have no look-behind, so matching from the cut is matching from the
  start of the second piece. Later pre-tokenizers of a Sequence, the model (BPE,
  WordPiece, WordLevel, Unigram) and the post-processor (no special tokens added) act on
  each pre-token alone.
- truncation and padding are off (they act on the whole result).

Any other pipeline (a Metaspace or Prepend that adds to the start, no pre-tokenizer,
another Split pattern, BERT's normalizer turning line breaks into spaces...) is encoded
whole, as before. tests/ingest/test_safe_cuts.py checks pieces against whole encodings
with a cut at every separator of texts made to be hard (contractions, digit runs,
combining marks, runs of spaces and line breaks, CJK).
"""

from __future__ import annotations

import re
import unicodedata
from typing import Iterator

PIECE = 1 << 18  # characters per piece of a long document

# Split patterns analysed above: GPT-2's (as a Split), cl100k (Llama 3, OLMo 2), Qwen2's
KNOWN_PATTERNS = {
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+",
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
}
_NORMALIZERS = {"NFC", "NFD", "NFKC", "NFKD", "Lowercase"}
_SPLITTERS = {"Whitespace", "WhitespaceSplit", "BertPreTokenizer"}
_SEPARATOR = re.compile(r"(?<=[^\W_])[ \n](?=[^\W_])")  # [^\W_] is exactly str.isalnum


def cuttable(config: dict) -> bool:
    """Whether a tokenizer (its tokenizer.json, parsed) encodes pieces cut at separators exactly."""
    if config.get("truncation") or config.get("padding"):
        return False
    for added in config.get("added_tokens") or []:
        if added.get("lstrip") or added.get("rstrip") or " " in added["content"] or "\n" in added["content"]:
            return False
    if not _local_normalizer(config.get("normalizer")):
        return False
    pre = config.get("pre_tokenizer")
    if pre and pre.get("type") == "Sequence":
        pre = (pre.get("pretokenizers") or [None])[0]
    return _splits_at_separators(pre)


def _local_normalizer(n: dict | None) -> bool:
    if n is None:
        return True
    if n.get("type") == "Sequence":
        return all(_local_normalizer(x) for x in n.get("normalizers") or [])
    return n.get("type") in _NORMALIZERS


def _splits_at_separators(pre: dict | None) -> bool:
    if pre is None:
        return False
    kind = pre.get("type")
    if kind in _SPLITTERS:
        return True
    if kind == "ByteLevel":
        return bool(pre.get("use_regex", True)) and not pre.get("add_prefix_space", False)
    if kind == "Split":
        pattern = pre.get("pattern") or {}
        return (pattern.get("Regex") in KNOWN_PATTERNS and pre.get("behavior") == "Isolated"
                and not pre.get("invert", False))
    return False


def _plain(ch: str) -> bool:
    return ch.isalnum() and unicodedata.normalize("NFKD", ch) == ch


def pieces(text: str, size: int = PIECE) -> Iterator[str]:
    """`text` in pieces of about `size` characters, cut only at separators (see module doc),
    and at most 2 * size characters each: where no separator allows a cut in that span (one
    word of 100 MB, a run of punctuation), the piece is cut at 2 * size, inexactly.

    Why a forced cut: a run that cannot be cut exactly must otherwise be encoded whole, and
    a 100 MB word took 6.9 GB of HF memory and over 300 s of tiktoken (BPE over one
    pre-token grows faster than linearly). Its ids then differ from a whole encoding near
    each forced cut (a token or two per 2 * size characters), the same for both backends
    (the cut is made before either sees the text). Llama 3's reference tokenizer does the
    same to runs of 25,000 non-whitespace characters. `forced_cuts` counts them."""
    start = 0
    at = size
    while len(text) - start > size:
        limit = start + 2 * size
        m = _SEPARATOR.search(text, at, limit)
        if m is None:
            if len(text) <= limit:
                break
            yield text[start:limit]
            start, at = limit, limit + size
            continue
        c = m.start()
        if not (_plain(text[c - 1]) and _plain(text[c + 1])):
            at = c + 1
            continue
        yield text[start:c]
        start, at = c, c + size
    yield text[start:]


def forced_cuts(text: str, size: int = PIECE) -> int:
    """How many of the cuts `pieces` makes in `text` are forced (not at a separator)."""
    if len(text) <= 2 * size:
        return 0
    return sum(not (p[:1] in (" ", "\n") and len(p) > 1 and p[1].isalnum()) for p in list(pieces(text, size))[1:])
