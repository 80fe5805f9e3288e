"""Proofs about stores and mixes: verify (exactness from the bytes), audit (leakage), similarity."""
