"""A word-level tokenizer trained in memory (no network), for tests that tokenize."""

from __future__ import annotations

from pathlib import Path


def word_tokenizer(path: Path, words: list[str]) -> Path:
    """tokenizer.json over `words` plus [UNK] and <|endoftext|> (the EOS), written at `path`."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator([" ".join(words)], trainers.WordLevelTrainer(special_tokens=["[UNK]", "<|endoftext|>"]))
    path.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(path))
    return path
