"""The sweep experiment's table: HPT at every value of one stage setting, the value chosen on val, and the test score
read for the chosen value only (and for the Base, the reference), with the paired difference chosen - Base.

Test scores of the values not chosen are not shown: reading them would invite choosing on test. A value whose
embeddings collapsed is marked and never chosen.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from hpt.report.learned import learning_failure
from hpt.report.noise import difference_note, metric_name, pct, score_cell
from hpt.report.selection import chosen_on


def chosen_value(values: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The row of the value with the highest val score (test for older rows) among those that did not collapse."""
    on = chosen_on(values)
    healthy = [r for r in values if learning_failure(r, None) is None]
    return max(healthy, key=lambda r: r[on]) if healthy else None


def sweep_table(rows: list[dict[str, Any]]) -> str:
    """One table per protocol: each value's val score, the chosen value's and the Base's test score, and notes."""
    by_protocol: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_protocol[row["protocol"]].append(row)
    parts = []
    for protocol, group in by_protocol.items():
        values = [r for r in group if r["series"] == "HPT"]
        base = next((r for r in group if r["series"] == "Base"), None)
        if not values:
            continue
        setting = values[0].get("setting") or "value"
        on = chosen_on(values)
        chosen = chosen_value(values)
        parts.append(f"**{protocol}** - HPT at each value of `{setting}`: val {metric_name(group)} of every value, "
                     f"the value chosen on {on}; test score [95% bootstrap interval] read for the chosen value and "
                     f"the Base only, {group[0]['test_images']} test images\n")
        parts.append(f"| {setting} | val score | test score | |")
        parts.append("|---|---|---|---|")
        if base is not None:
            parts.append(f"| Base (no HPT) | {_val(base)} | {score_cell(base)} | reference |")
        for row in values:
            failure = learning_failure(row, None)
            note = f"did not learn ({failure})" if failure else ("chosen on " + on if row is chosen else "")
            test = score_cell(row) if row is chosen else "-"
            parts.append(f"| {row['x']} | {_val(row)} | {test} | {note} |")
        parts.append("")
        parts.extend(_notes(setting, on, chosen, base))
    return "\n".join(parts)


def _val(row: dict[str, Any]) -> str:
    return pct(row["val"]) if row.get("val") is not None else "-"


def _notes(setting: str, on: str, chosen: dict[str, Any] | None, base: dict[str, Any] | None) -> list[str]:
    if chosen is None:
        return [f"- no value chosen: the embeddings collapsed at every value of {setting}", ""]
    score = pct(chosen[on])
    why = "the highest val score" if on == "val" else "the highest test score: these rows predate validation scores"
    notes = [f"- chosen: {setting} = {chosen['x']} ({why}, {score})"]
    if base is not None:
        notes.append(f"- HPT ({setting} = {chosen['x']}) - Base: {difference_note(chosen, base)}")
    return notes + [""]
