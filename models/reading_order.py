"""Turn line boxes from a classic engine into text in reading order."""
from __future__ import annotations

from typing import Protocol, TypeVar

from models.contract import Block


class Boxed(Protocol):
    @property
    def bbox(self) -> tuple[float, float, float, float]: ...


BoxedT = TypeVar("BoxedT", bound=Boxed)


def group_rows(items: list[BoxedT]) -> list[list[BoxedT]]:
    """Group boxes whose vertical centres fall inside each other's span into rows, top to bottom."""
    rows: list[list[BoxedT]] = []
    for item in sorted(items, key=lambda b: (b.bbox[1] + b.bbox[3]) / 2):
        centre = (item.bbox[1] + item.bbox[3]) / 2
        if rows:
            last = rows[-1]
            top = min(b.bbox[1] for b in last)
            bottom = max(b.bbox[3] for b in last)
            if top <= centre <= bottom:
                last.append(item)
                continue
        rows.append([item])
    return [sorted(row, key=lambda b: b.bbox[0]) for row in rows]


def rows_to_text(blocks: list[Block]) -> str:
    return "\n".join(" ".join(b.text for b in row if b.text) for row in group_rows(blocks))
