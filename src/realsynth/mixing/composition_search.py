"""Exact per-batch compositions of three or more sources whose shares change over time.

The state of a mixed stream before global batch ``g`` is the set of sources whose running count
``X_k(g)`` is ``ceil(T_k(g))`` rather than ``floor(T_k(g))`` (``T_k`` the running target;
"strictly within one item" leaves exactly these two choices, one when ``T_k`` is an integer).
It is a bit mask ``m`` over the sources, with ``popcount(m) = g * batch_size - sum floor(T_k)``.
Going from ``m`` before batch ``g`` to ``m'`` after it gives source k
``floor(T_k(g+1)) - floor(T_k(g)) + m'_k - m_k`` items, which must be ``floor`` or ``ceil`` of
its per-batch target; per source that rules out some of the steps ``m'_k - m_k`` in
``{-1, 0, +1}``.

With fixed shares a greedy rule (PD^2) never gets stuck. With shares that change, every greedy
rule tried (largest lag, earliest deadline, PD^2 with the current weights) does on some
schedules: a choice that is fine now can leave no valid choice a few batches later. Yet a valid
path always exists: the fractional path ``X = T`` is one, so the flow polytope of the problem
is non-empty and, being a network flow with integer bounds, has an integer point. This module
finds one by dynamic programming over the states: a backward pass marks the states from which
the rest of the stream can be completed, a forward pass takes the smallest such successor.
After the schedule's last change the shares are constant and the constraints repeat with a
period ``P``; the states with an endless continuation there are the greatest fixed point of the
backward pass around that cycle, and the forward path through them is eventually periodic, so
it is tabulated once.

Constraints of a batch are four ints: ``fractional`` (sources with ``T_k`` not an integer before
the batch) and the masks of sources that forbid a step of ``0``, ``+1`` and ``-1``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = ["MAX_SEARCH_SOURCES", "BatchConstraints", "PeriodicPath", "search_path"]

# States are bit masks over the sources, state sets bit masks over states: 2^6 = 64 bits.
MAX_SEARCH_SOURCES = 6

# (fractional, ceiled count, forbid 0, forbid +1, forbid -1) per batch, as python int lists.
BatchConstraints = tuple[list[int], list[int], list[int], list[int], list[int]]

_CHUNK = 1 << 15


def _candidates(num_sources: int) -> list[list[int]]:
    """All state masks by popcount: ``[[masks with j bits] for j in 0..K]``."""
    out: list[list[int]] = [[] for _ in range(num_sources + 1)]
    for m in range(1 << num_sources):
        out[m.bit_count()].append(m)
    return out


def _allowed(m: int, n: int, f0: int, fp: int, fm: int) -> bool:
    """True when going from state ``m`` to ``n`` breaks no source's per-batch bound."""
    return not ((~(m ^ n) & f0) | (~m & n & fp) | (m & ~n & fm))


def _survivors(
    frac: int, ceiled: int, f0: int, fp: int, fm: int, nxt: int, cand: list[list[int]]
) -> int:
    """The valid states of a batch with an allowed successor in the state set ``nxt``."""
    good = 0
    successors = [n for n in range(nxt.bit_length()) if nxt >> n & 1]
    for m in cand[ceiled]:
        if m & ~frac:
            continue
        for n in successors:
            if _allowed(m, n, f0, fp, fm):
                good |= 1 << m
                break
    return good


def _successor(m: int, f0: int, fp: int, fm: int, nxt: int) -> int:
    """The smallest state in ``nxt`` reachable from ``m``; -1 when there is none."""
    for n in range(nxt.bit_length()):
        if nxt >> n & 1 and _allowed(m, n, f0, fp, fm):
            return n
    return -1


class PeriodicPath:
    """The states after the last change, as an eventually periodic sequence.

    Args:
        constraints: the constraints of phases ``0 .. period - 1`` (they repeat).
        num_sources: K.

    Attributes:
        entry: the states allowed at phase 0 that have an endless valid continuation.
    """

    def __init__(self, constraints: BatchConstraints, num_sources: int) -> None:
        self._cons = constraints
        self.period = len(constraints[0])
        self._cand = _candidates(num_sources)
        self.entry = self._fixed_point()
        self._masks = np.zeros(0, dtype=np.uint8)
        self._cycle_start = 0

    def _fixed_point(self) -> int:
        frac, ceiled, f0, fp, fm = self._cons
        period = self.period
        good = [
            sum(1 << m for m in self._cand[ceiled[h]] if not m & ~frac[h]) for h in range(period)
        ]
        changed = True
        while changed:
            changed = False
            for h in range(period - 1, -1, -1):
                nxt = good[(h + 1) % period]
                new = _survivors(frac[h], ceiled[h], f0[h], fp[h], fm[h], nxt, self._cand) & good[h]
                if new != good[h]:
                    good[h], changed = new, True
        if not good[0]:  # cannot happen: an exact endless path exists
            raise RuntimeError("no exact composition exists after the schedule's last change")
        self._good = good
        return good[0]

    def start(self, state: int) -> None:
        """Tabulates the path from ``state`` at phase 0 until it repeats."""
        if not self.entry >> state & 1:
            raise RuntimeError(f"state {state} has no endless continuation")
        _, _, f0, fp, fm = self._cons
        period, seen, masks = self.period, {}, []
        while state not in seen:
            seen[state] = len(masks)
            for h in range(period):
                masks.append(state)
                state = _successor(state, f0[h], fp[h], fm[h], self._good[(h + 1) % period])
        self._masks = np.array(masks, dtype=np.uint8)
        self._cycle_start = seen[state]

    def states(self, offsets: np.ndarray) -> np.ndarray:
        """States before batches ``offsets`` (counted from the last change): uint8 [N]."""
        size = self._masks.shape[0]
        cycle = size - self._cycle_start
        folded = np.where(
            offsets < size, offsets, self._cycle_start + (offsets - self._cycle_start) % cycle
        )
        return self._masks[folded]


def search_path(
    constraints: Callable[[int, int], BatchConstraints],
    num_batches: int,
    tail: PeriodicPath,
    num_sources: int,
) -> np.ndarray:
    """States before batches ``0 .. num_batches`` of a valid path that continues into ``tail``.

    Args:
        constraints: ``(start, stop) ->`` the constraints of batches ``[start, stop)``.
        num_batches: G, the batches before the schedule's last change.
        tail: the periodic part, entered at batch G.
        num_sources: K.

    Returns:
        uint8 array [G + 1]; entry 0 is the empty state, entry G one of ``tail.entry``.
    """
    cand = _candidates(num_sources)
    good = np.zeros(num_batches + 1, dtype=np.uint64)
    nxt = tail.entry
    good[num_batches] = nxt
    for stop in range(num_batches, 0, -_CHUNK):
        start = max(0, stop - _CHUNK)
        frac, ceiled, f0, fp, fm = constraints(start, stop)
        for i in range(stop - start - 1, -1, -1):
            nxt = _survivors(frac[i], ceiled[i], f0[i], fp[i], fm[i], nxt, cand)
            good[start + i] = nxt
    if not int(good[0]) & 1:  # cannot happen: the fractional path X = T is valid
        raise RuntimeError("no exact composition exists for this schedule")
    states = np.zeros(num_batches + 1, dtype=np.uint8)
    state = 0
    for start in range(0, num_batches, _CHUNK):
        stop = min(num_batches, start + _CHUNK)
        _, _, f0, fp, fm = constraints(start, stop)
        for i in range(stop - start):
            state = _successor(state, f0[i], fp[i], fm[i], int(good[start + i + 1]))
            states[start + i + 1] = state
    return states
