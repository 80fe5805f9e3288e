"""The schedule: which source fills each sample position of a mix. Pure integer math.

Choices, and why (compare Megatron, OLMo-core, litdata):

* Megatron's BlendedDataset picks, per position, the source whose achieved share lags
  its target most (greedy error correction). With two sources that is already exact in
  every window: measured, its blend of a 2% domain held exactly 2, 20 and 200
  domain samples in every window of 100, 1,000 and 10,000 samples, as Bresenham placement
  does here. Where mixer differs is elsewhere: (1) order within a source: Megatron shuffles
  a source's epochs together (13 epochs in the measured case), so per-document counts are
  floor/ceil of the planned passes only at the end of the run, and a document can be seen
  twice before another is seen once; mixer permutes each epoch separately, so at every
  step every document has been seen floor or ceil of the passes so far. (2) N sources:
  mixer places each source in turn with a proven bound on every window (below); the greedy
  blend states none for more than two. OLMo-core's mixture takes a per-source token budget
  and fills the remainder of a repeated source by taking a prefix. litdata samples sources
  at random per sample: fractions hold only in expectation. We need exact per-document
  counts at every checkpoint and a bounded share in every window of every source.

* Placement is stratified (Bresenham): domain sample j sits at position
  w0 + floor((j * W + r) / Nd) inside the window [w0, w0 + W). Any W' consecutive
  positions then hold floor or ceil of W' * Nd / W domain samples, so the share is
  within 1/W' of the fraction at every scale. The phase r comes from the seed. The
  count of domain samples before any position is a closed form, so a shard computes
  its own positions without looking at the rest of the run (docs/design.md, invariant 5).

* Domain samples are placed in stream order: epoch e of the domain is consumed before
  epoch e + 1, so at every checkpoint each domain document has been seen floor or ceil
  of the epochs so far (what the overfitting scaling law assumes of intermediate
  checkpoints). Domain samples are already far apart (1/f positions), so they need no
  further shuffle.

* More than two sources (N-source mixes): sources are placed one after another. Source 0
  is stratified over all positions as above; source i is stratified, the same way, over
  the positions sources 0..i-1 left free (in the coordinates of those free positions),
  and the last general source takes what is left. With one domain this is exactly the
  two-source placement. Source i's share is then exact within B_i / W in every window of
  W samples, B_0 = 1 and B_i = 1 + r_i * (B_0 + ... + B_{i-1}), r_i its density among
  the free positions (`Layout.bounds`; proof in docs/architecture.md). Bounds of 1 for
  every source at once are impossible in general (balanced words with arbitrary rates do
  not exist), and for small domain fractions B_i is barely above 1. OLMo-core's mixture
  (per-source ratios with a prefix remainder) bounds no window; Megatron's greedy blend is
  exact for two sources and states no bound for more.

* General samples are shuffled (a Feistel bijection, mixer/feistel.py) within each
  block of one general epoch, so neighbouring samples are unrelated while a repeated
  general source still finishes epoch e before starting e + 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def ceil_div(a: np.ndarray | int, b: int) -> np.ndarray | int:
    return -((-a) // b)


@dataclass(frozen=True)
class Placement:
    """Stratified positions of `n_domain` samples inside the window [w0, w1) of n samples."""

    n: int
    n_domain: int
    w0: int
    w1: int
    phase: int

    @classmethod
    def make(cls, n: int, n_domain: int, window: tuple[float, float], seed: int) -> "Placement":
        w0, w1 = round(window[0] * n), round(window[1] * n)
        width = w1 - w0
        if n_domain > width:
            raise ValueError(f"{n_domain} domain samples do not fit a window of {width} samples")
        phase = int(np.random.default_rng([seed, 0x5EED]).integers(width)) if width else 0
        return cls(n=n, n_domain=n_domain, w0=w0, w1=w1, phase=phase)

    @property
    def width(self) -> int:
        return self.w1 - self.w0

    def domain_before(self, p: np.ndarray | int) -> np.ndarray:
        """Number of domain samples at positions < p (vectorized over p)."""
        q = np.clip(np.asarray(p, dtype=np.int64) - self.w0, 0, self.width)
        if self.n_domain == 0:
            return np.zeros_like(q)
        return np.clip(ceil_div(q * self.n_domain - self.phase, self.width), 0, self.n_domain)

    def positions(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """For positions [start, stop): a domain mask and each position's index within its source."""
        before = self.domain_before(np.arange(start, stop + 1, dtype=np.int64))
        is_domain = np.diff(before) == 1
        p = np.arange(start, stop, dtype=np.int64)
        index = np.where(is_domain, before[:-1], p - before[:-1])
        return is_domain, index


@dataclass(frozen=True)
class Layout:
    """Several placements, each in the free positions the previous ones left.

    `levels[i]` is a Placement over the free coordinates of level i: q_0(p) = p, and
    q_{i+1}(p) = q_i(p) - levels[i].domain_before(q_i(p)). Every step is closed form, so a
    shard computes its own positions without looking at the rest of the run.
    """

    n: int
    levels: tuple[Placement, ...]

    @classmethod
    def make(cls, n: int, counts: list[int], window: tuple[float, float], seed: int) -> "Layout":
        a, b = round(window[0] * n), round(window[1] * n)
        levels: list[Placement] = []
        for i, k in enumerate(counts):
            lay = cls(n, tuple(levels))
            w0, w1 = int(lay.free_before(a)), int(lay.free_before(b))
            if i == 0:  # the two-source placement, unchanged (pinned by tests)
                levels.append(Placement.make(n, k, window, seed))
                continue
            if k > w1 - w0:
                raise ValueError(f"{k} samples of source {i} do not fit the {w1 - w0} positions left in the window")
            phase = int(np.random.default_rng([seed, 0x5EED, i]).integers(w1 - w0)) if w1 > w0 else 0
            levels.append(Placement(n=n - sum(counts[:i]), n_domain=k, w0=w0, w1=w1, phase=phase))
        return cls(n, tuple(levels))

    def free_before(self, p: np.ndarray | int) -> np.ndarray:
        """Positions < p that no level takes (the coordinates of the next level)."""
        q = np.asarray(p, dtype=np.int64)
        for pl in self.levels:
            q = q - pl.domain_before(q)
        return q

    def positions(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """For positions [start, stop): the level of each (len(levels) = the remainder) and its
        index within that level's source."""
        q = np.arange(start, stop + 1, dtype=np.int64)
        level = np.full(stop - start, len(self.levels), dtype=np.int64)
        index = np.zeros(stop - start, dtype=np.int64)
        for i, pl in enumerate(self.levels):
            before = pl.domain_before(q)
            free = np.diff(q) == 1
            hit = free & (np.diff(before) == 1)
            level[hit] = i
            index[hit] = before[:-1][hit]
            q = q - before
        rest = level == len(self.levels)
        index[rest] = q[:-1][rest]
        return level, index

    def bounds(self) -> list[float]:
        """B_i: source i's count in any W consecutive positions of the window is within B_i
        of W times its achieved fraction (module docstring)."""
        out: list[float] = []
        for pl in self.levels:
            r = pl.n_domain / pl.width if pl.width else 0.0
            out.append(1.0 + r * sum(out))
        return out


@dataclass(frozen=True)
class Counts:
    """How many samples each source gets; the numbers every other step derives from."""

    samples: int
    domain_samples: int
    general_samples: int
    seq_len: int
    window: tuple[float, float]
    extra_samples: tuple[int, ...] = ()  # further placed sources of an N-source mix, in order

    @property
    def window_width(self) -> int:
        return round(self.window[1] * self.samples) - round(self.window[0] * self.samples)

    @property
    def tokens(self) -> int:
        return self.samples * self.seq_len

    def stream_tokens(self, n_samples: int) -> int:
        """Tokens of a source's stream that n samples consume (one-token overlap)."""
        return n_samples * self.seq_len + 1 if n_samples else 0

    @property
    def achieved_fraction(self) -> float:
        w0, w1 = round(self.window[0] * self.samples), round(self.window[1] * self.samples)
        return self.domain_samples / max(1, w1 - w0)


def solve_counts(
    *,
    seq_len: int,
    domain_tokens: int | None,
    has_general: bool,
    tokens: int | None = None,
    fraction: float | None = None,
    epochs: float | None = None,
    window: tuple[float, float] = (0.0, 1.0),
) -> Counts:
    """Any two of (tokens, fraction, epochs) fix the third; fraction is within the window.

    Without a general source the mix is domain-only (a finetune): fraction is 1.
    Raises ValueError with the numbers when the request is impossible.
    """
    span = window[1] - window[0]
    if not has_general:
        fraction = 1.0
    if domain_tokens is None:  # general-only (NPT)
        if tokens is None:
            raise ValueError("--tokens is required for a mix without a domain")
        n = tokens // seq_len
        return Counts(n, 0, n, seq_len, window)
    if epochs is not None:
        n_domain = max(0, round((epochs * domain_tokens - 1) / seq_len))
        if tokens is not None:
            n = tokens // seq_len
        elif fraction is not None:
            n = round(n_domain / (fraction * span))
        else:
            raise ValueError("--epochs needs --tokens or --fraction to size the mix")
    elif fraction is not None and tokens is not None:
        n = tokens // seq_len
        n_domain = round(fraction * (round(window[1] * n) - round(window[0] * n)))
    else:
        raise ValueError("give two of --tokens, --fraction, --epochs")
    return Counts(n, n_domain, n - n_domain, seq_len, window)


def epoch_start_samples(stream_tokens: int, epoch_tokens: int, seq_len: int) -> list[int]:
    """Index of the first sample that starts at or after each epoch boundary of a stream."""
    if epoch_tokens <= 0 or stream_tokens <= 1:
        return [0]
    n_epochs = ceil_div(stream_tokens - 1, epoch_tokens)
    return [int(ceil_div(e * epoch_tokens, seq_len)) for e in range(int(n_epochs))]
