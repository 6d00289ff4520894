"""What an extraction gives: one value per template field with where it was read, and the problems.

The same object feeds the Extract page, `cli.py extract` (JSON / CSV) and the results store; hand
corrections go through `correct`, which normalises them like the engines' values, and come back from
the store through `apply_corrections`; a corrected field keeps the engine's value beside its own.
"""
from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from datetime import UTC, datetime

from pydantic import BaseModel, Field

from utils.extraction.normalise import NotAValue, normalise
from utils.extraction.templates import Template

Value = str | float | int | None


class ExtractedField(BaseModel):
    value: Value = None
    source: str | None = Field(default=None, description="the text the value was read from, as the document writes it")
    page: int | None = Field(default=None, description="0-based page index")
    bbox: tuple[float, float, float, float] | None = Field(default=None, description="page pixels, when known")
    corrected: bool = False
    original: Value = Field(default=None, description="a corrected field's value as the engine read it")


class Correction(BaseModel):
    """One value changed by hand: what the engine said and what the person wrote."""

    field: str
    before: Value
    after: Value
    at: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))


class Extraction(BaseModel):
    file: str
    template: str
    model: str
    fields: dict[str, ExtractedField]
    problems: list[str] = Field(default_factory=list)
    error: str | None = None  # the document could not be read at all (one line)
    pages: list[int] = Field(default_factory=list, description="0-based pages read")
    answers: list[str] = Field(default_factory=list, description="a VLM's raw answers, for inspection")

    def values(self) -> dict[str, Value]:
        return {name: field.value for name, field in self.fields.items()}

    def found(self) -> int:
        return sum(field.value is not None for field in self.fields.values())

    def to_json(self) -> dict:
        """The CLI's and the download's shape: `fields` name -> value, where each came from, problems."""
        return {
            "file": self.file, "template": self.template, "model": self.model, "fields": self.values(),
            "sources": {name: {"text": f.source, "page": None if f.page is None else f.page + 1,
                               "bbox": list(f.bbox) if f.bbox else None, "corrected": f.corrected,
                               **({"original": f.original} if f.corrected else {})}
                        for name, f in self.fields.items() if f.value is not None or f.corrected},
            "problems": self.problems, "error": self.error,
        }


def empty_fields(template: Template) -> dict[str, ExtractedField]:
    return {name: ExtractedField() for name in template.fields}


def check_problems(template: Template, extraction: Extraction, notes: Iterable[str] = ()) -> list[str]:
    """Notes from the engine, then either one line saying nothing was recognised, or one line per
    missing required field."""
    problems = list(notes)
    if extraction.error is not None:
        return problems
    if extraction.found() == 0:
        problems.append(f"no {template.label} fields recognised")
        return problems
    for name in template.required():
        if extraction.fields[name].value is None:
            problems.append(f"{name}: required, not found")
    return problems


def correct(template: Template, extraction: Extraction, name: str, text: str) -> tuple[Extraction, Correction]:
    """`extraction` with field `name` set to what a person typed, normalised to the field's type.

    Raises NotAValue (one line) when it does not fit the type, KeyError for an unknown field; the
    extraction passed in is never changed."""
    if name not in template.fields:
        raise KeyError(f"unknown field '{name}'; the template has: {', '.join(template.fields)}")
    spec = template.fields[name]
    try:
        value = normalise(spec.type, text, spec.date_order)
    except NotAValue as exc:
        raise NotAValue(f"{name}: {exc}") from None
    before = extraction.fields[name]
    return _with_value(template, extraction, name, value), Correction(field=name, before=before.value, after=value)


def apply_corrections(template: Template, extraction: Extraction, corrections: Iterable[Correction]) -> Extraction:
    """`extraction` as the engine gave it with these corrections made, in order (kept ones, from the
    store); a correction of a field the template no longer has is passed over."""
    for correction in corrections:
        if correction.field in template.fields and correction.field in extraction.fields:
            extraction = _with_value(template, extraction, correction.field, correction.after)
    return extraction


def _with_value(template: Template, extraction: Extraction, name: str, value: Value) -> Extraction:
    """A copy with field `name` set by hand: marked corrected, the engine's value kept beside it; back
    to the engine's value, it is no longer a correction. Problems follow the values."""
    before = extraction.fields[name]
    original = before.original if before.corrected else before.value
    fields = dict(extraction.fields)
    fields[name] = before.model_copy(update={"value": value, "corrected": value != original,
                                             "original": original if value != original else None})
    updated = extraction.model_copy(update={"fields": fields})
    notes = [p for p in extraction.problems if not _is_field_problem(template, p)]
    updated.problems = check_problems(template, updated, notes)
    return updated


def _is_field_problem(template: Template, problem: str) -> bool:
    """The problems `check_problems` derives from the values (recomputed after a correction)."""
    return problem.startswith(f"no {template.label} fields recognised") or \
        any(problem == f"{name}: required, not found" for name in template.fields)


def to_csv(template: Template, extractions: Iterable[Extraction]) -> str:
    """One row per document: file, model, every field of the template, problems, error."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["file", "model", *template.fields, "problems", "error"])
    for extraction in extractions:
        values = extraction.values()
        writer.writerow([extraction.file, extraction.model,
                         *("" if values.get(name) is None else values[name] for name in template.fields),
                         "; ".join(extraction.problems), extraction.error or ""])
    return buffer.getvalue()
