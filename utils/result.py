"""The one result type that flows adapter -> loader -> storage -> UI -> export."""
from __future__ import annotations

from pydantic import BaseModel, Field

TASKS = ("text", "markdown", "layout", "prompt")


class Block(BaseModel):
    """A region found on the page; bbox is (x1, y1, x2, y2) in original page pixels."""

    bbox: tuple[float, float, float, float]
    category: str = "Text"
    text: str = ""
    score: float | None = None


class PageResult(BaseModel):
    text: str = ""
    markdown: str = ""
    blocks: list[Block] = Field(default_factory=list)
    model: str
    task: str
    device: str = "cpu"
    dtype: str | None = None
    profile: str = "default"
    seconds: float = 0.0
    load_seconds: float | None = None
    tokens: int | None = None
    truncated: bool = False
    warnings: list[str] = Field(default_factory=list)
    page: int | None = None
    source: str | None = None
    width: int | None = None
    height: int | None = None

    @property
    def tokens_per_second(self) -> float | None:
        if not self.tokens or self.seconds <= 0:
            return None
        return self.tokens / self.seconds
