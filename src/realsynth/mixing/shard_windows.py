"""The index stream of a sharded source: a permutation that keeps to a few shards at a time.

A uniform permutation over a source read from remote shards touches a different shard at almost
every item, so a cache of a few shards misses nearly always and every shard is downloaded again
and again. This stream permutes in two levels instead, every pass anew:

1. the shards' order (a keyed permutation of ``[0, S)`` for pass ``p``);
2. the items within each *window* of ``window`` consecutive shards of that order (a keyed
   permutation of the window's items, keyed by the pass and the window).

So the items of one window come from at most ``window`` shards, and a pass opens each shard
once while a reader keeps ``window`` of them open. Like :class:`KeyedStream` it is a function of
the stream position: nothing proportional to the number of items is built (the per-pass layout
is O(S)), and any position is computed directly, so resuming and disjoint ranks work as they do
for any source.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from realsynth.mixing.permutation import KeyedStream, _scalar_hash

__all__ = ["ShardWindowStream"]


class ShardWindowStream:
    """The infinite index stream of a source stored in shards, with shard locality.

    Args:
        shard_sizes: int [S] items per shard, in item order (shard ``k`` holds the items after
            those of shards ``0..k-1``); every size >= 1.
        window: shards whose items are shuffled together, >= 1.
        seed: run seed.
        stream_id: distinguishes sources sharing a seed (the source's position).
    """

    replacement = False

    def __init__(self, shard_sizes: Sequence[int], *, window: int, seed: int, stream_id: int):
        counts = np.asarray(shard_sizes, dtype=np.int64).reshape(-1)
        if counts.size == 0 or counts.min() < 1:
            raise ValueError("ShardWindowStream needs at least one shard, each with >= 1 item")
        if window < 1:
            raise ValueError(f"ShardWindowStream window must be >= 1, got {window}")
        self.counts = counts
        self.size = int(counts.sum())
        self.window = int(window)
        self._first_item = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        self._seed, self._stream_id = int(seed), int(stream_id)
        self._shard_order = KeyedStream(
            len(counts), seed=seed, stream_id=stream_id, replacement=False
        )
        self._layouts: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def take(self, start: int, count: int) -> np.ndarray:
        """Items at stream positions ``[start, start + count)``: int64 [count]."""
        return self.at(np.arange(start, start + count, dtype=np.int64))

    def at(self, positions: np.ndarray) -> np.ndarray:
        """Items at arbitrary stream positions.

        Args:
            positions: int array [N] of stream positions, >= 0.

        Returns:
            int64 [N] item indices in ``[0, size)``.
        """
        pos = np.asarray(positions, dtype=np.int64)
        passes, local = np.divmod(pos, self.size)
        out = np.empty(pos.shape, dtype=np.int64)
        for p in np.unique(passes).tolist():
            chosen = passes == p
            out[chosen] = self._within_pass(p, local[chosen])
        return out

    def shard_of(self, items: np.ndarray) -> np.ndarray:
        """int64 [N]: the shard holding each item."""
        return np.searchsorted(self._first_item, items, side="right") - 1

    def _layout(self, p: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Pass ``p``'s shard order [S], where each ordered shard's items start in the pass
        [S + 1], and where each window starts [W + 1]."""
        if p not in self._layouts:
            if len(self._layouts) >= 2:  # positions come in increasing passes
                self._layouts.pop(min(self._layouts))
            num_shards = len(self.counts)
            order = self._shard_order.take(p * num_shards, num_shards)
            starts = np.concatenate([[0], np.cumsum(self.counts[order])]).astype(np.int64)
            windows = np.append(starts[: num_shards : self.window], self.size).astype(np.int64)
            self._layouts[p] = (order, starts, windows)
        return self._layouts[p]

    def _within_pass(self, p: int, local: np.ndarray) -> np.ndarray:
        order, starts, windows = self._layout(p)
        window_of = np.searchsorted(windows, local, side="right") - 1
        out = np.empty(local.shape, dtype=np.int64)
        for w in np.unique(window_of).tolist():
            chosen = window_of == w
            lo, hi = int(windows[w]), int(windows[w + 1])
            key = int(_scalar_hash(self._stream_id, p, w, 0x5AD))
            shuffle = KeyedStream(hi - lo, seed=self._seed, stream_id=key, replacement=False)
            ranked = lo + shuffle.at(local[chosen] - lo)  # position in the pass's shard order
            j = np.searchsorted(starts, ranked, side="right") - 1
            out[chosen] = self._first_item[order[j]] + (ranked - starts[j])
        return out
