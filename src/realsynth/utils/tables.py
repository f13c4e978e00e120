"""One table printer for everything realsynth prints: recall in percent, a ``%`` in the header.

Every table is markdown (``| a | b |`` rows under a ``|---|`` separator), so it pastes into an
issue or a README as is.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

METRIC_ORDER = ("R", "ngR", "mR", "zsR")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Right-aligned markdown table of string cells."""
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).rjust(w) for c, w in zip(cells, widths)) + " |"

    separator = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), separator, *(line(row) for row in rows)])


def percent(value: float | None) -> str:
    """A fraction in [0, 1] as a percentage with two decimals (``-`` for a missing value)."""
    return "-" if value is None else f"{100 * value:.2f}"


def metric_sort_key(name: str) -> tuple[int, int, str]:
    """R, ngR, mR, zsR, each by increasing K."""
    prefix, _, k = name.partition("@")
    rank = METRIC_ORDER.index(prefix) if prefix in METRIC_ORDER else len(METRIC_ORDER)
    return (rank, int(k) if k.isdigit() else 0, name)


def format_table(results_by_source: Mapping[str, Mapping[str, float]]) -> str:
    """Recall per source (rows) and metric (columns), in percent.

    Args:
        results_by_source: ``{source name: {"R@50": 0.61, ...}}`` (fractions in [0, 1]).

    Returns:
        the table; metrics a source lacks show as ``-``.
    """
    if not results_by_source:
        raise ValueError("format_table: no results to show")
    names = sorted(
        {key for metrics in results_by_source.values() for key in metrics}, key=metric_sort_key
    )
    rows = [
        [source, *(percent(metrics.get(n)) for n in names)]
        for source, metrics in results_by_source.items()
    ]
    return markdown_table(["source", *(f"{n} %" for n in names)], rows)
