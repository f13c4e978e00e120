"""Read the top-level lists of a large JSON object a batch of elements at a time.

``json.load`` of a relcoco file of 10^6 images builds some 10^8 Python objects (about 12 GB)
before anything is kept. :func:`iter_list_batches` reads the file in chunks instead, finds with
numpy where each top-level list's elements begin and end (outside strings, at the list's depth),
and parses a batch of whole elements at a time (with orjson when it is installed), so that the
caller turns each batch into compact columns and memory stays near one chunk's worth of objects.

The scan is exact JSON structure, not pattern matching: quotes preceded by an odd run of
backslashes are escaped, and brackets inside strings are text. A file that is not one JSON
object raises ``ValueError``; the caller then reads it the ordinary way, whose errors name the
position.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

CHUNK_BYTES = 32 << 20
_QUOTE, _BACKSLASH, _COMMA = ord('"'), ord("\\"), ord(",")
_OPEN_LIST = ord("[")
_STRUCTURAL = np.zeros(256, dtype=bool)
_STRUCTURAL[list(b'"\\{}[],')] = True
_DELTA = np.zeros(256, dtype=np.int32)
_DELTA[list(b"{[")], _DELTA[list(b"}]")] = 1, -1


def json_loader() -> Callable[[bytes], Any]:
    """orjson's ``loads`` when installed (3-5x faster on object-heavy JSON), else json's."""
    try:
        import orjson
    except ImportError:
        return json.loads
    return orjson.loads


class _Scan:
    """The structure of one chunk, on its structural bytes only (quotes, brackets, commas,
    backslashes: a quarter of a compact relcoco file), so that the running counts run over
    those rather than over every byte.

    Attributes:
        at: int64 [E] positions of the structural bytes outside strings (quotes excluded).
        byte: uint8 [E] those bytes; ``depth`` int32 [E] the depth after each, ``before`` the
            depth before it.
    """

    def __init__(self, data: np.ndarray, in_string: bool, depth: int) -> None:
        at = np.flatnonzero(_STRUCTURAL[data])
        byte = data[at]
        quotes = byte == _QUOTE
        if (byte == _BACKSLASH).any():
            quotes &= ~_escaped(data)[at]
        parity = np.cumsum(quotes, dtype=np.int32) & 1
        inside = parity.astype(bool) ^ in_string
        # A closing quote counts as inside; text, not structure, either way.
        keep = ~(inside | quotes) & (byte != _BACKSLASH)
        self.at, self.byte = at[keep], byte[keep]
        delta = _DELTA[self.byte]
        self.depth = depth + np.cumsum(delta, dtype=np.int32)
        self.before = self.depth - delta
        self.end_in_string = bool(int(quotes.sum()) % 2) ^ in_string
        self.end_depth = int(self.depth[-1]) if len(self.depth) else depth


def _escaped(data: np.ndarray) -> np.ndarray:
    """Quotes preceded by an odd number of backslashes (rare: done per quote)."""
    out = np.zeros(len(data), dtype=bool)
    for q in np.flatnonzero((data == _QUOTE)[1:] & (data[:-1] == _BACKSLASH)) + 1:
        run = 0
        while q - run - 1 >= 0 and data[q - run - 1] == _BACKSLASH:
            run += 1
        out[q] = run % 2 == 1
    return out


def iter_list_batches(
    path: str | Path, chunk_bytes: int = CHUNK_BYTES
) -> Iterator[tuple[str, list]]:
    """Yields ``(key, elements)``: the parsed elements of the file's top-level lists, in file
    order, a chunk's worth at a time (a list's batches follow each other; an empty list yields
    one empty batch). Values that are not lists are skipped.

    Raises:
        ValueError: the file is not a JSON object whose values are closed properly.
    """
    loads = json_loader()
    reader = _ListReader(loads)
    with open(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            while chunk.endswith(b"\\"):  # never cut between a backslash and what it escapes
                more = f.read(1)
                if not more:
                    break
                chunk += more
            yield from reader.feed(chunk)
    if reader.depth != 0 or reader.in_string or not reader.started:
        raise ValueError(f"{path}: not one complete JSON object")


class _ListReader:
    """The state carried from chunk to chunk: depth, string, the current list's unparsed tail."""

    def __init__(self, loads: Callable[[bytes], Any]) -> None:
        self.loads = loads
        self.depth, self.in_string, self.started, self.closed = 0, False, False, False
        self.key: str | None = None  # the top-level list being read
        self.pending = b""  # bytes of the current list not yet parsed (a partial element)
        self.head = b""  # bytes at depth 1 since the last value: where the next key is

    def feed(self, chunk: bytes) -> Iterator[tuple[str, list]]:
        data = np.frombuffer(chunk, dtype=np.uint8)
        if not self.started and chunk.strip():
            if not chunk.lstrip().startswith(b"{"):
                raise ValueError("not a JSON object")
            self.started = True
        scan = _Scan(data, self.in_string, self.depth)
        if (scan.depth < 0).any():
            raise ValueError("unbalanced brackets")
        ends = scan.at[(scan.depth == 0) & (scan.before == 1)]
        trailing = chunk[int(ends[0]) + 1 :] if len(ends) else b""
        if (self.closed and chunk.strip()) or len(ends) > 1 or trailing.strip():
            raise ValueError("text after the JSON object")  # only whitespace may follow it
        self.closed = self.closed or bool(len(ends))
        # Top-level lists open where depth goes 1 -> 2 on '[' and close where it goes 2 -> 1.
        opening = (scan.before == 1) & (scan.depth == 2)
        list_opens = scan.at[opening & (scan.byte == _OPEN_LIST)]
        value_opens = scan.at[opening]
        closes = scan.at[(scan.before == 2) & (scan.depth == 1)]
        commas = scan.at[(scan.byte == _COMMA) & (scan.depth == 2)]
        yield from self._walk(chunk, list_opens, value_opens, closes, commas)
        self.depth, self.in_string = scan.end_depth, scan.end_in_string

    def _walk(self, chunk, list_opens, value_opens, closes, commas) -> Iterator[tuple[str, list]]:
        pos = 0
        events = sorted(
            [(int(p), "open") for p in value_opens] + [(int(p), "close") for p in closes]
        )
        lists = set(list_opens.tolist())
        for at, kind in events:
            if kind == "open":
                if self.key is None and at in lists:
                    self.key = _last_key(self.head + chunk[pos:at])
                    self.pending, pos = b"", at + 1
                else:
                    self.head, pos = b"", at + 1  # an object value: skipped whole
                continue
            if self.key is not None:
                body = self.pending + chunk[pos:at]
                yield self.key, self.loads(b"[" + body + b"]")
                self.key, self.pending = None, b""
            self.head, pos = b"", at + 1
        if self.key is None:
            self.head = (self.head + chunk[pos:])[-4096:]
            return
        cut = commas[commas >= pos]
        if len(cut):
            last = int(cut[-1])
            body = self.pending + chunk[pos:last]
            yield self.key, self.loads(b"[" + body + b"]")
            self.pending = chunk[last + 1 :]
        else:
            self.pending += chunk[pos:]


def _last_key(text: bytes) -> str:
    """The key of the value that starts after ``text`` (``..., "key": ``)."""
    colon = text.rstrip().rstrip(b":").rstrip()
    if not colon.endswith(b'"'):
        raise ValueError("a top-level value without a key")
    start = colon.rfind(b'"', 0, len(colon) - 1)
    while start > 0 and colon[start - 1] == _BACKSLASH:
        start = colon.rfind(b'"', 0, start)
    return json.loads(colon[start:])
