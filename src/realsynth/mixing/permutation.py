"""Keyed pseudo-random permutations and uniform draws computed on demand.

A source of ``n`` items is visited through an infinite stream: stream position ``j`` maps to
item ``perm_p(j % n)`` where ``p = j // n`` is the pass number and ``perm_p`` is a bijection of
``[0, n)`` keyed by ``(seed, source, p)``. ``perm_p`` is a Feistel network over the smallest
power of two >= ``n`` with cycle walking (values that land outside ``[0, n)`` are fed through the
network again until they land inside), so nothing proportional to ``n`` is ever materialized:
memory and time per index are the same for ten items and for 10^9.

All arithmetic is uint64 numpy, vectorized over the requested positions; multiplication wraps
modulo 2^64, which is what the mixing functions rely on.
"""

from __future__ import annotations

import numpy as np

__all__ = ["KeyedStream", "splitmix64"]

_ROUNDS = 4
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
# Odd multipliers, one per Feistel round; the high bits of the product are the round output.
_ROUND_MULTIPLIERS = tuple(
    np.uint64(c)
    for c in (0xD6E8FEB86659FD93, 0xA0761D6478BD642F, 0xE7037ED1A0B428DB, 0x8EBC6AF09C88C6E3)
)
_MAX_SIZE = 1 << 62


def splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finalizer: a bijective, well-mixing hash of uint64 values.

    Args:
        x: uint64 array of any shape (not modified).

    Returns:
        uint64 array of the same shape.
    """
    z = x + _GOLDEN
    z ^= z >> np.uint64(30)
    z *= _MIX1
    z ^= z >> np.uint64(27)
    z *= _MIX2
    z ^= z >> np.uint64(31)
    return z


def _scalar_hash(*parts: int) -> np.uint64:
    """Chains splitmix64 over non-negative integers; used to derive keys."""
    acc = np.zeros(1, dtype=np.uint64)
    for part in parts:
        acc = splitmix64(acc ^ np.asarray([part & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))
    return acc[0]


class KeyedStream:
    """The infinite index stream of one source: keyed permutations or uniform draws.

    Args:
        size: number of items ``n`` in the source, 1 <= n < 2^62.
        seed: run seed.
        stream_id: distinguishes sources sharing a seed (the source's position).
        replacement: ``False`` for passes without repeats (a new permutation per pass),
            ``True`` for independent uniform draws (position ``j`` -> hash(j) mod n).
    """

    def __init__(self, size: int, *, seed: int, stream_id: int, replacement: bool) -> None:
        if not 1 <= size < _MAX_SIZE:
            raise ValueError(f"KeyedStream size must be in [1, 2^62), got {size}")
        self.size = int(size)
        self.replacement = bool(replacement)
        self._key = _scalar_hash(seed, stream_id, 0x5EED)
        self._n = np.uint64(self.size)
        # Feistel halves: low part `lo_bits`, high part `hi_bits`; at least 1 bit each.
        bits = max(2, (self.size - 1).bit_length())
        self._lo_bits = bits // 2
        self._hi_bits = bits - self._lo_bits
        self._round_keys = tuple(_scalar_hash(seed, stream_id, r, 0xFE15) for r in range(_ROUNDS))

    def take(self, start: int, count: int) -> np.ndarray:
        """Items at stream positions ``[start, start + count)``.

        Args:
            start: first stream position, >= 0.
            count: number of positions, >= 0.

        Returns:
            int64 array [count] of local item indices in ``[0, size)``.
        """
        if self.replacement or self.size == 1 or count > 8 * self.size:
            return self.at(np.arange(start, start + count, dtype=np.uint64))
        # Contiguous positions span few passes: one scalar key per pass, no division.
        out = np.empty(count, dtype=np.int64)
        filled = 0
        while filled < count:
            pass_index, local = divmod(start + filled, self.size)
            length = min(count - filled, self.size - local)
            x = np.arange(local, local + length, dtype=np.uint64)
            out[filled : filled + length] = self._permute(x, self._pass_tweak(pass_index))
            filled += length
        return out

    def _pass_tweak(self, pass_index: int) -> np.uint64:
        return splitmix64(np.asarray([pass_index], dtype=np.uint64) ^ self._key)[0]

    def at(self, positions: np.ndarray) -> np.ndarray:
        """Items at arbitrary stream positions.

        Args:
            positions: uint64/int64 array [N] of stream positions, >= 0.

        Returns:
            int64 array [N] of local item indices in ``[0, size)``.
        """
        pos = np.asarray(positions).astype(np.uint64, copy=False)
        if self.replacement:
            return (splitmix64(pos ^ self._key) % self._n).astype(np.int64)
        if self.size == 1:
            return np.zeros(pos.shape, dtype=np.int64)
        passes = pos // self._n
        local = pos - passes * self._n
        tweak = splitmix64(passes ^ self._key)
        return self._permute(local, tweak).astype(np.int64)

    def _permute(self, x: np.ndarray, tweak: np.ndarray | np.uint64) -> np.ndarray:
        """Cycle-walks the Feistel bijection until every value is below ``size``.

        ``tweak`` (the pass key) is one scalar for all of ``x`` or one value per element.
        """
        out = self._feistel(x, tweak)
        outside = np.flatnonzero(out >= self._n)
        per_element = np.ndim(tweak) > 0
        while outside.size:
            walked = self._feistel(out[outside], tweak[outside] if per_element else tweak)
            out[outside] = walked
            outside = outside[walked >= self._n]
        return out

    def _feistel(self, x: np.ndarray, tweak: np.ndarray | np.uint64) -> np.ndarray:
        """An unbalanced Feistel bijection of ``[0, 2^bits)``, one pass keyed per element.

        Each round moves the low part to the top and replaces the high part by itself XOR a
        keyed hash of the low part; the part widths alternate, and after an even number of
        rounds the layout is the original one.
        """
        lo_bits, hi_bits = self._lo_bits, self._hi_bits
        for r in range(_ROUNDS):
            lo_mask = np.uint64((1 << lo_bits) - 1)
            lo = x & lo_mask
            hi = x >> np.uint64(lo_bits)
            f = lo ^ (tweak ^ self._round_keys[r])
            f *= _ROUND_MULTIPLIERS[r]
            f >>= np.uint64(64 - hi_bits)
            hi ^= f
            lo <<= np.uint64(hi_bits)
            lo |= hi
            x = lo
            lo_bits, hi_bits = hi_bits, lo_bits
        return x
