"""Turn line boxes from a classic engine into text in reading order."""
from __future__ import annotations

from models.contract import Block


def group_rows(blocks: list[Block]) -> list[list[Block]]:
    """Group boxes whose vertical centres fall inside each other's span into rows, top to bottom."""
    rows: list[list[Block]] = []
    for block in sorted(blocks, key=lambda b: (b.bbox[1] + b.bbox[3]) / 2):
        centre = (block.bbox[1] + block.bbox[3]) / 2
        if rows:
            last = rows[-1]
            top = min(b.bbox[1] for b in last)
            bottom = max(b.bbox[3] for b in last)
            if top <= centre <= bottom:
                last.append(block)
                continue
        rows.append([block])
    return [sorted(row, key=lambda b: b.bbox[0]) for row in rows]


def rows_to_text(blocks: list[Block]) -> str:
    return "\n".join(" ".join(b.text for b in row if b.text) for row in group_rows(blocks))
