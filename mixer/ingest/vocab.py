"""Which tokenizer made a store: name, path, sha256, vocabulary size, EOS id.

Every store records this, and every store of a study must share it (the sha256 of
tokenizer.json is what `mixer.formats.store.check_same_tokenizer` compares).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from mixer.errors import MixerError, UsageError

# tried in order when no --eos is given: GPT-2/NeoX/OLMo, Llama/Mistral, Llama-3, BERT-likes
EOS_CANDIDATES = ("<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>", "<|eos|>", "[SEP]")


@dataclass(frozen=True)
class TokenizerInfo:
    name: str
    path: str
    sha256: str
    vocab_size: int
    eos_id: int
    eos: str

    def to_dict(self) -> dict:
        return asdict(self)


def tokenizer_name(path: Path) -> str:
    """tokenizers/gpt2/tokenizer.json -> 'gpt2'; my-bpe.json -> 'my-bpe'; a hub cache's
    models--org--name/snapshots/<rev>/tokenizer.json -> 'org/name'."""
    parts = path.parts
    if len(parts) >= 4 and parts[-3] == "snapshots" and parts[-4].startswith("models--"):
        return parts[-4].removeprefix("models--").replace("--", "/")
    return path.parent.name if path.name == "tokenizer.json" and path.parent.name else path.stem


def find_tokenizer(text: str | Path, flag: str = "--tokenizer") -> Path:
    """A tokenizer as labs name it: a tokenizer.json file; a folder holding one (a hub
    snapshot, a LitGPT checkpoint folder); or a name already in a local cache: mixer's
    (`$MIXER_CACHE/tokenizers/NAME`, where `mixer fetch-samples` puts gpt2) or the Hugging
    Face hub's (`$HF_HUB_CACHE`, else `$HF_HOME/hub`, else ~/.cache/huggingface/hub). Nothing
    is downloaded: this machine may have no network."""
    path = Path(text).expanduser()
    if path.is_file():
        return path.resolve()
    if path.is_dir():
        if (path / "tokenizer.json").is_file():
            return (path / "tokenizer.json").resolve()
        raise UsageError(f"{flag} {path}: a folder without tokenizer.json (a HuggingFace tokenizer.json is needed)")
    mixer_dir, hub_dir = _caches(str(text))
    candidates = [mixer_dir / "tokenizer.json", *_hub_snapshots(hub_dir)]
    found = next((c for c in candidates if c.is_file()), None)
    if found is not None:
        return found.resolve()
    raise UsageError(f"{flag} {text}: no such file or folder, and no tokenizer of that name in the local caches "
                     f"({mixer_dir}, {hub_dir}); give a tokenizer.json or the folder holding it")


def _caches(name: str) -> tuple[Path, Path]:
    mixer_cache = Path(os.environ.get("MIXER_CACHE") or "~/.cache/mixer").expanduser()
    hf_home = Path(os.environ.get("HF_HOME") or "~/.cache/huggingface").expanduser()
    hub = Path(os.environ.get("HF_HUB_CACHE") or hf_home / "hub").expanduser()
    return mixer_cache / "tokenizers" / name, hub / ("models--" + name.replace("/", "--"))


def _hub_snapshots(repo: Path) -> list[Path]:
    """tokenizer.json of a hub cache's snapshots, the one `refs/main` names first."""
    snapshots = sorted((repo / "snapshots").glob("*/tokenizer.json"))
    ref = repo / "refs" / "main"
    if ref.is_file():
        main = repo / "snapshots" / ref.read_text().strip() / "tokenizer.json"
        snapshots = [main] + [p for p in snapshots if p != main]
    return snapshots


def load_tokenizer_info(path: str | Path, eos: str | None = None, flag: str = "--tokenizer") -> TokenizerInfo:
    """Read a `tokenizers` JSON file (or a folder or cached name: find_tokenizer) and
    identify it; a clear error if it is not one."""
    from tokenizers import Tokenizer

    path = find_tokenizer(path, flag)
    data = path.read_bytes()
    try:
        tok = Tokenizer.from_str(data.decode("utf-8"))
    except Exception as e:  # tokenizers raises a bare Exception with serde's message
        raise MixerError(f"{flag} {path}: not a HuggingFace tokenizers JSON file ({str(e).splitlines()[0]})") from None
    if eos is not None:
        eos_id = tok.token_to_id(eos)
        if eos_id is None:
            raise UsageError(f"--eos {eos!r}: not a token of {path}")
    else:
        found = [(c, tok.token_to_id(c)) for c in EOS_CANDIDATES if tok.token_to_id(c) is not None]
        if not found:
            raise MixerError(
                f"{flag} {path}: no end-of-document token found (tried {', '.join(EOS_CANDIDATES)}); pass --eos TOKEN"
            )
        eos, eos_id = found[0]
    return TokenizerInfo(
        name=tokenizer_name(path),
        path=str(path),
        sha256=hashlib.sha256(data).hexdigest(),
        vocab_size=tok.get_vocab_size(with_added_tokens=True),
        eos_id=int(eos_id),
        eos=eos,
    )
