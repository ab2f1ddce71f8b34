"""Which score a report chooses by: validation, never test - except for rows written before rows kept it.

Choosing the best row (or a curve's best point) by its test score and then reading that same test score flatters
it by construction; the choice is made on the val score (the classifier's val score at its chosen step, averaged
over the evaluation's seeds), and the test score is only read for what was chosen.
"""

from __future__ import annotations

from typing import Any


def chosen_on(rows: list[dict[str, Any]]) -> str:
    """'val' when every row carries a val score, else 'test' (rows written before rows kept one)."""
    return "val" if rows and all(r.get("val") is not None for r in rows) else "test"


def best_row(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The row with the highest val score (the first on a tie), or the highest test score for older rows."""
    on = chosen_on(rows)
    return max(rows, key=lambda r: r[on])


def predate_val(rows: list[dict[str, Any]]) -> bool:
    """True when some row has no val score, so that its choices fall back to test scores."""
    return any(r.get("val") is None for r in rows)
