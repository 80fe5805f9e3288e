"""Stage 1: corpora on disk -> token stores (read, tokenize, split, detect near-duplicates, merge)."""
