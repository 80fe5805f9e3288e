"""Which tokenizer made a store: name, path, sha256, vocabulary size, EOS id.

Every store records this, and every store of a study must share it (the sha256 of
tokenizer.json is what `mixer.formats.store.check_same_tokenizer` compares).
"""

from __future__ import annotations

import hashlib
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
    """tokenizers/gpt2/tokenizer.json -> 'gpt2'; my-bpe.json -> 'my-bpe'."""
    return path.parent.name if path.name == "tokenizer.json" and path.parent.name else path.stem


def load_tokenizer_info(path: str | Path, eos: str | None = None, flag: str = "--tokenizer") -> TokenizerInfo:
    """Read a `tokenizers` JSON file and identify it; a clear error if it is not one."""
    from tokenizers import Tokenizer

    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise UsageError(f"{flag} {path}: no such file (a HuggingFace tokenizer.json is needed)")
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
