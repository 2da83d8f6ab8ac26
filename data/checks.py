"""Checks of a dataset's rows for mistakes that still parse: a class with very few rows
(a cut-off or mistyped label on one line becomes a class of its own) and texts that
occur in two splits (the same example is trained on and evaluated on).

Rows are `(text, label, group, origin)` as `data.sources` yields them, by split.

Example:
    >>> rows = {"train": [("good", "pos", "", "a.csv:2"), ("bad", "neg", "", "a.csv:3")],
    ...         "test": [("good", "pos", "", "b.csv:2")]}
    >>> shared_texts(rows)
    {'train/test': [('a.csv:2', 'b.csv:2')]}
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

Row = tuple[str, str, str, str]

# A label is rare when it has fewer rows than this ...
RARE_ROWS = 5
# ... or than this fraction of all rows.
RARE_FRACTION = 0.01
# Origins named per finding (messages and manifest stay short).
SHOWN = 5


def rare_labels(rows: dict[str, Sequence[Row]]) -> dict[str, dict]:
    """Labels with fewer than RARE_ROWS rows or RARE_FRACTION of the rows of all splits:
    `{label: {"rows": count, "where": [origin, ...]}}` (the first SHOWN origins)."""
    counts = Counter(label for split_rows in rows.values() for _, label, _, _ in split_rows)
    total = sum(counts.values())
    rare = {label: count for label, count in counts.items()
            if count < RARE_ROWS or count < RARE_FRACTION * total}
    found: dict[str, dict] = {label: {"rows": count, "where": []}
                              for label, count in sorted(rare.items())}
    for split_rows in rows.values():
        for _, label, _, origin in split_rows:
            if label in found and len(found[label]["where"]) < SHOWN:
                found[label]["where"].append(origin)
    return found


def shared_texts(rows: dict[str, Sequence[Row]]) -> dict[str, list[tuple[str, str]]]:
    """For each pair of splits "a/b" (in the order given), the distinct texts found in
    both, as (origin in a, origin in b) of their first occurrences. Texts are compared
    exactly (case and spacing count)."""
    first = {split: {} for split in rows}
    for split, split_rows in rows.items():
        seen = first[split]
        for text, _, _, origin in split_rows:
            seen.setdefault(text, origin)
    splits = list(rows)
    out: dict[str, list[tuple[str, str]]] = {}
    for i, a in enumerate(splits):
        for b in splits[i + 1:]:
            out[f"{a}/{b}"] = [(origin, first[b][text]) for text, origin in first[a].items()
                               if text in first[b]]
    return out
