"""Fields from a vision-language model: ask for JSON matching the template, read the answer leniently,
validate it, and ask once more with the validation errors when it does not fit.

Reading is lenient because small models wrap JSON in code fences, add a sentence after it, write
Python literals (single quotes, None, True) or stop mid-object: the first JSON object is taken
from the answer, then Python's literal syntax is tried, then the object is repaired (json-repair).
Validation is strict: a pydantic model built from the template checks every value against its
field's type, after the same normalisation as the classic engines' values.
"""
from __future__ import annotations

import ast
import json
import re
from collections.abc import Callable
from functools import partial
from typing import Annotated, Any

import json_repair
from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError, create_model

from utils.extraction.normalise import normalise
from utils.extraction.result import ExtractedField
from utils.extraction.templates import Template

TYPE_WORDS = {"string": "string", "date": "date as YYYY-MM-DD", "amount": "number, no currency or thousands separators",
              "integer": "whole number"}
_FENCE = re.compile(r"```[ \t]*(?:json|python|JSON)?[ \t]*\n?(.*?)(?:```|$)", re.DOTALL)


class NotJSON(ValueError):
    """The answer holds no JSON object; the message is one line."""


def max_new_tokens(template: Template) -> int:
    """Room for the JSON object of this template: its keys, short values, a little slack."""
    return min(1024, 96 + 48 * len(template.fields))


def _some_labels(labels: list[str], each: int = 3) -> list[str]:
    """A few labels of each script, so a Russian document's wording is in the prompt too."""
    cyrillic = [label for label in labels if re.search(r"[а-яё]", label, re.IGNORECASE)]
    latin = [label for label in labels if label not in cyrillic]
    return latin[:each] + cyrillic[:each]


def build_prompt(template: Template, model: str) -> str:
    lines = [f"Read this document ({template.label}) and extract these fields as one JSON object.", "Keys:"]
    for name, spec in template.fields.items():
        hint = spec.hint("vlm", model)
        labels = f"; labelled like {', '.join(map(repr, _some_labels(spec.labels)))}" if spec.labels else ""
        extra = f"; {hint.prompt}" if hint.prompt else ""
        need = "required" if spec.required else "optional"
        lines.append(f'- "{name}" ({TYPE_WORDS[spec.type]}, {need}): {spec.description}{labels}{extra}')
    lines.append("Copy text exactly as printed. Use null for a field that is not on the document. "
                 "Answer with the JSON object only.")
    return "\n".join(lines)


def retry_prompt(template: Template, model: str, errors: list[str]) -> str:
    return (build_prompt(template, model) + "\n\nYour previous answer could not be used: "
            + "; ".join(errors) + ". Answer again with one valid JSON object only.")


def _first_object(text: str) -> str | None:
    start = text.find("{")
    return text[start:] if start >= 0 else None


def parse_answer(text: str) -> dict[str, Any]:
    """The JSON object in a model's answer. Raises NotJSON."""
    fenced = _FENCE.search(text)
    body = _first_object(fenced.group(1)) if fenced else None
    body = body or _first_object(text)
    if body is None:
        raise NotJSON("the model's answer holds no JSON object")
    try:
        data, _ = json.JSONDecoder().raw_decode(body)  # trailing text after the object is ignored
    except json.JSONDecodeError:
        data = None
    if not isinstance(data, dict):
        end = body.rfind("}")
        try:
            data = ast.literal_eval(body[:end + 1]) if end > 0 else None
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            data = None
    if not isinstance(data, dict):
        repaired = json_repair.loads(body)
        data = repaired if isinstance(repaired, dict) and repaired else None
    if data is None:
        raise NotJSON("the model's answer is not valid JSON, even after repair")
    return _unwrap(data)


def _unwrap(data: dict[str, Any]) -> dict[str, Any]:
    """{"invoice": {...}} or {"fields": {...}}: the one nested object is the answer."""
    if len(data) == 1:
        (inner,) = data.values()
        if isinstance(inner, dict):
            return inner
    return data


def _check(kind: str, order: str, value: Any) -> Any:
    return normalise(kind, value, order)  # type: ignore[arg-type]


def answer_model(template: Template) -> type[BaseModel]:
    """The pydantic model of a valid answer: every required key present, every value of its type."""
    definitions: dict[str, Any] = {}
    for name, spec in template.fields.items():
        checked = Annotated[Any, BeforeValidator(partial(_check, spec.type, spec.date_order))]
        definitions[name] = (checked, ...) if spec.required else (checked, None)
    return create_model(f"{template.name}_answer", __config__=ConfigDict(extra="ignore"), **definitions)


def validate_answer(template: Template, data: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """(normalised values of the fields that are valid, one line per invalid or missing key)."""
    model = answer_model(template)
    try:
        return model.model_validate(data).model_dump(), []
    except ValidationError as exc:
        errors, bad = [], set()
        for err in exc.errors():
            name = str(err["loc"][0]) if err["loc"] else "(answer)"
            bad.add(name)
            message = "missing" if err["type"] == "missing" else err["msg"].removeprefix("Value error, ")
            errors.append(f"{name}: {message}")
    values = {}
    for name, spec in template.fields.items():
        if name in bad:
            continue
        try:
            values[name] = normalise(spec.type, data.get(name), spec.date_order)
        except ValueError:
            continue
    return values, errors


Ask = Callable[[str], str]


def read_fields(ask: Ask, template: Template, model: str) -> tuple[dict[str, ExtractedField], list[str], list[str]]:
    """Ask for the fields, once more with the errors when the answer does not fit.

    Returns (fields, problems, the raw answers). `ask(prompt)` returns the model's text; an
    exception from it (a failed page) propagates."""
    answers: list[str] = []
    values: dict[str, Any] = {}
    written: dict[str, Any] = {}  # what the model wrote for each kept value: the field's source
    errors: list[str] = []
    prompt = build_prompt(template, model)
    for attempt in range(2):
        answer = ask(prompt)
        answers.append(answer)
        try:
            data = parse_answer(answer)
        except NotJSON as exc:
            errors = [str(exc)]
        else:
            attempt_values, errors = validate_answer(template, data)
            if sum(v is not None for v in attempt_values.values()) >= sum(v is not None for v in values.values()):
                values, written = attempt_values, data
        if not errors or attempt == 1:
            break
        prompt = retry_prompt(template, model, errors)
    problems = []
    if errors:
        shown = "; ".join(errors[:3]) + (f"; and {len(errors) - 3} more" if len(errors) > 3 else "")
        problems.append(f"could not read fields: {shown} (after one retry)")
    fields = {name: ExtractedField(value=values.get(name),
                                   source=None if values.get(name) is None else str(written.get(name)))
              for name in template.fields}
    return fields, problems, answers
