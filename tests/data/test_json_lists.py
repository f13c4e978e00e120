"""Streaming the top-level lists of a JSON object: the same elements as json.load at any chunk
size, strings with brackets, quotes and backslashes included."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from realsynth.data.formats.json_lists import iter_list_batches

TEXT = st.text(alphabet='ab[]{},:"\\ \n\u00e9', max_size=6)
SCALARS = st.one_of(
    st.integers(-5, 5), st.floats(allow_nan=False, allow_infinity=False, width=32), TEXT, st.none()
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(TEXT, inner, max_size=3)),
    max_leaves=8,
)


def _streamed(path, chunk: int) -> dict[str, list]:
    out: dict[str, list] = {}
    for key, batch in iter_list_batches(path, chunk_bytes=chunk):
        out.setdefault(key, []).extend(batch)
    return out


@settings(max_examples=80, deadline=None)
@given(
    document=st.dictionaries(TEXT, st.one_of(st.lists(VALUES, max_size=6), VALUES), max_size=4),
    chunk=st.integers(1, 64),
    indent=st.sampled_from([None, 1]),
)
def test_every_top_level_list_streams_as_json_load_reads_it(
    tmp_path_factory, document, chunk, indent
):
    path = tmp_path_factory.mktemp("j") / "doc.json"
    path.write_text(json.dumps(document, indent=indent, ensure_ascii=bool(chunk % 2)))
    expected = {k: v for k, v in document.items() if isinstance(v, list)}
    assert _streamed(path, chunk) == expected


@pytest.mark.parametrize(
    "text", ['{"a": [1, 2', "[1, 2]", '{"a": [1]}}', '{"a": ["x]', '{"a": []} x', "{}{}"]
)
def test_text_that_is_not_one_json_object_is_refused(tmp_path, text):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(ValueError):
        _streamed(path, 4)
