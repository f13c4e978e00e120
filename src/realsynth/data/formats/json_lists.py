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
_OPENS, _CLOSES = (ord("{"), ord("[")), (ord("}"), ord("]"))
_SPACE = tuple(b" \t\r\n")


def json_loader() -> Callable[[bytes], Any]:
    """orjson's ``loads`` when installed (3-5x faster on object-heavy JSON), else json's."""
    try:
        import orjson
    except ImportError:
        return json.loads
    return orjson.loads


class _Scan:
    """The structure of one chunk: where strings are, the depth after every byte."""

    def __init__(self, data: np.ndarray, in_string: bool, depth: int) -> None:
        quotes = data == _QUOTE
        if (data == _BACKSLASH).any():
            quotes &= ~_escaped(data)
        parity = np.cumsum(quotes, dtype=np.int64) & 1
        inside = parity.astype(bool) ^ in_string
        # A closing quote is inside by the parity count; it is text, not structure, either way.
        outside = ~(inside | quotes)
        opens = np.isin(data, _OPENS) & outside
        closes = np.isin(data, _CLOSES) & outside
        self.depth = depth + np.cumsum(opens.astype(np.int32) - closes.astype(np.int32))
        self.opens, self.closes, self.outside = opens, closes, outside
        self.end_in_string = bool(inside[-1]) if len(data) else in_string
        self.end_depth = int(self.depth[-1]) if len(data) else depth


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
        self.depth, self.in_string, self.started, self.objects = 0, False, False, 0
        self.key: str | None = None  # the top-level list being read
        self.pending = b""  # bytes of the current list not yet parsed (a partial element)
        self.head = b""  # bytes at depth 1 since the last value: where the next key is

    def feed(self, chunk: bytes) -> Iterator[tuple[str, list]]:
        data = np.frombuffer(chunk, dtype=np.uint8)
        scan = _Scan(data, self.in_string, self.depth)
        before = np.concatenate([[self.depth], scan.depth[:-1]]).astype(np.int32)
        if not self.started and chunk.strip():
            if not chunk.lstrip().startswith(b"{"):
                raise ValueError("not a JSON object")
            self.started = True
        if (scan.depth < 0).any():
            raise ValueError("unbalanced brackets")
        # Outside the one object only whitespace: no second value, no trailing text.
        top = (scan.depth == 0) & ~(scan.closes & (before == 1)) & ~np.isin(data, _SPACE)
        self.objects += int((scan.opens & (before == 0)).sum())
        if top.any() or self.objects > 1:
            raise ValueError("text after the JSON object")
        # Top-level lists open where depth goes 1 -> 2 on '[' and close where it goes 2 -> 1.
        list_opens = np.flatnonzero(scan.opens & (before == 1) & (data == ord("[")))
        value_opens = np.flatnonzero(scan.opens & (before == 1))
        closes = np.flatnonzero(scan.closes & (before == 2))
        commas = np.flatnonzero((data == _COMMA) & scan.outside & (scan.depth == 2))
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
