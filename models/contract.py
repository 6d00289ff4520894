"""The contract every part speaks: tasks, run options, blocks, the page result, availability.

It imports nothing from the project, so adapters, the engine, the pages and the CLI can all use it
without import cycles. One result type flows adapter -> engine -> UI / CLI -> export.
"""
from __future__ import annotations

from collections.abc import Callable

from pydantic import BaseModel, ConfigDict, Field, field_validator

TASKS = ("text", "markdown", "layout", "prompt")  # what a page can be recognised as
CHAT = "chat"  # a conversation about one or more page images; not a page result
ALL_TASKS = (*TASKS, CHAT)
ROLES = ("user", "assistant")

TokenCallback = Callable[[str], None]


class RunOptions(BaseModel):
    """Per-request knobs; the guard lowers the budgets when retrying after an out-of-memory error."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    prompt: str | None = None
    max_pixels: int | None = None
    max_new_tokens: int | None = None
    languages: str | None = None  # an OCR engine's languages for this document, e.g. "rus+eng" (Tesseract)
    # Task "chat": the earlier turns as (role, text), oldest first (prompt is the new question), and the
    # recognised text of pages that were not sent as images.
    history: tuple[tuple[str, str], ...] = ()
    context: str | None = None

    @field_validator("history")
    @classmethod
    def _roles(cls, history: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
        bad = sorted({role for role, _ in history if role not in ROLES})
        if bad:
            raise ValueError(f"history roles must be {' or '.join(ROLES)}, got {bad}")
        return history

    def output_key(self, task: str) -> str | None:
        """What in these options changes the output: the free prompt, the OCR languages chosen for the
        document. Budgets lowered for a retry are the same request."""
        parts = [self.prompt] if task == "prompt" and self.prompt is not None else []
        if self.languages:
            parts.append(f"languages={self.languages}")
        return "\n".join(parts) if parts else None


class Availability(BaseModel):
    available: bool
    status: str  # "ready", "not installed", "not downloaded", "no server", ...
    reason: str = ""
    fix: str | None = None  # the exact command or step that makes it available
    # Languages a document may ask for instead of the configured ones (RunOptions.languages, joined by
    # "+"); empty: the engine reads a fixed set. `default_languages`: what it reads when none is chosen.
    languages: tuple[str, ...] = ()
    default_languages: str | None = None


class Block(BaseModel):
    """A region found on the page; bbox is (x1, y1, x2, y2) in original page pixels."""

    bbox: tuple[float, float, float, float]
    category: str = "Text"
    text: str = ""
    score: float | None = None
    # A line's words (category "Word") with their own boxes and scores, where the engine gives them;
    # their texts joined by spaces are the line's text.
    words: list[Block] = Field(default_factory=list)


class PageResult(BaseModel):
    text: str = ""
    markdown: str = ""
    blocks: list[Block] = Field(default_factory=list)
    raw: str = ""  # the model's own output before parsing (VLMs), for re-parsing without a rerun
    prompt: str = ""  # task "chat": the conversation as the model got it (chat template applied)
    images: list[tuple[int, int]] = Field(default_factory=list)  # task "chat": each image's size as the model saw it
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


class ResultKey(BaseModel):
    """Identifies one page's result: the same key means the same output, wherever it is kept."""

    model_config = ConfigDict(frozen=True)
    digest: str  # the document's content hash
    page: int  # 0-based
    model: str
    task: str
    variant: str | None = None  # what in the options changes the output (the free prompt)
