"""Document templates: which fields a kind of document has, their types, and how to find them.

One YAML file per template in utils/extraction/templates/ (the file's stem is the template's name).
Each is validated on load; a bad value is reported as `file: key.path: what was expected, got X`,
like config.yaml, and a bad template never hides the good ones.
"""
from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from utils.extraction.normalise import DateOrder, FieldType

TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"
ENGINE_KINDS = ("classic", "vlm")
_FIELD_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


class TemplateError(ValueError):
    """A template file is unreadable or holds a bad value; the message names the file and the key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _check_pattern(pattern: str | None) -> str | None:
    if pattern is not None:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"expected a regular expression ({exc})") from None
    return pattern


class FieldHint(_Strict):
    """What one engine, or one kind of engine ("classic", "vlm"), needs beyond the field itself."""

    labels: list[str] = Field(default_factory=list, description="more labels this engine reads (its misreadings)")
    after: dict[str, list[str]] = Field(default_factory=dict, description="more `after` labels, by field")
    pattern: str | None = Field(default=None, description="the value's regular expression for this engine")
    prompt: str | None = Field(default=None, description="words added to a VLM's request for this field")

    _pattern = field_validator("pattern")(_check_pattern)


class TemplateField(_Strict):
    type: FieldType
    required: bool = False
    description: str = Field(min_length=1)
    labels: list[str] = Field(default_factory=list, description="how documents label this field")
    # Labels that count only right after another field's label on the same line: "от" is the date
    # in "Счёт № 145 от 12.03.2024", not in "Договор № 7 от 01.02.2024".
    after: dict[str, list[str]] = Field(default_factory=dict, description="field name -> labels")
    pattern: str | None = Field(default=None, description="regular expression of a string value (its group 1, if any)")
    identifier: bool = Field(default=False, description="a code of letters and digits: OCR's look-alike letters "
                             "are put in the page's script and an O before digits after a prefix read as 0")
    pick: Literal["first", "last"] = Field(default="first", description="which label on the page, when several match")
    date_order: DateOrder = "dmy"
    hints: dict[str, FieldHint] = Field(default_factory=dict, description="keys: classic, vlm or a model name")

    _pattern = field_validator("pattern")(_check_pattern)

    @field_validator("labels")
    @classmethod
    def _labels_not_blank(cls, labels: list[str]) -> list[str]:
        if any(not label.strip() for label in labels):
            raise ValueError("expected non-empty labels")
        return labels

    def hint(self, kind: str, model: str | None = None) -> FieldHint:
        """The hints for this engine: its kind's, then its own on top (labels added, the rest replaced)."""
        merged = FieldHint(pattern=self.pattern, after=self.after)
        for key in (kind, model):
            hint = self.hints.get(key) if key else None
            if hint is not None:
                after = {key: merged.after.get(key, []) + hint.after.get(key, [])
                         for key in {**merged.after, **hint.after}}
                merged = FieldHint(labels=merged.labels + hint.labels, after=after,
                                   pattern=hint.pattern or merged.pattern, prompt=hint.prompt or merged.prompt)
        return merged


class Template(_Strict):
    name: str
    label: str = Field(min_length=1)
    description: str = ""
    ignore: list[str] = Field(default_factory=list,
                              description="phrases that look like a field's label but are not (\"Due date\")")
    fields: dict[str, TemplateField]

    @field_validator("fields")
    @classmethod
    def _field_names(cls, fields: dict[str, TemplateField]) -> dict[str, TemplateField]:
        if not fields:
            raise ValueError("expected at least one field")
        bad = [name for name in fields if not _FIELD_NAME.match(name)]
        if bad:
            raise ValueError(f"expected names like 'invoice_date' (a-z, 0-9, _), got {bad}")
        return fields

    @model_validator(mode="after")
    def _after_names_fields(self) -> Template:
        for name, spec in self.fields.items():
            places = [("after", spec.after)] + [(f"hints.{key}.after", hint.after) for key, hint in spec.hints.items()]
            for where, after in places:
                unknown = [key for key in after if key not in self.fields]
                if unknown:
                    raise ValueError(f"fields.{name}.{where}: expected field names of this template "
                                     f"({', '.join(self.fields)}), got {unknown}")
        return self

    def required(self) -> list[str]:
        return [name for name, spec in self.fields.items() if spec.required]


def _format_error(source: str, exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        message = err["msg"].removeprefix("Value error, ")
        got = err.get("input")
        got_txt = "" if isinstance(got, dict) or err["type"] == "missing" else f", got {got!r}"
        lines.append(f"{source}: {key}: {message}{got_txt}")
    return "; ".join(lines)


def load_template(path: str | Path, known_models: Iterable[str] | None = None) -> Template:
    """One template file, validated. `known_models` (the config's model names) checks the hint keys."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TemplateError(f"{path.name}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise TemplateError(f"{path.name}: cannot be read ({type(exc).__name__})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise TemplateError(f"{path.name}: not valid YAML{where} ({problem})") from None
    if not isinstance(data, dict):
        raise TemplateError(f"{path.name}: expected a mapping at the top level")
    if data.setdefault("name", path.stem) != path.stem:
        raise TemplateError(f"{path.name}: name: expected the file's name without .yaml ({path.stem!r}), "
                            f"got {data['name']!r}")
    try:
        template = Template.model_validate(data)
    except ValidationError as exc:
        raise TemplateError(_format_error(path.name, exc)) from None
    if known_models is not None:
        allowed = (*ENGINE_KINDS, *known_models)
        for name, spec in template.fields.items():
            for key in spec.hints:
                if key not in allowed:
                    raise TemplateError(f"{path.name}: fields.{name}.hints.{key}: expected one of "
                                        f"{', '.join(allowed)}, got {key!r}")
    return template


@dataclass
class TemplateSet:
    """Every template that loaded, and one line for each that did not."""

    templates: dict[str, Template] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


def load_templates(directory: str | Path = TEMPLATES_DIR, known_models: Iterable[str] | None = None) -> TemplateSet:
    known = list(known_models) if known_models is not None else None
    found = TemplateSet()
    for path in sorted(Path(directory).glob("*.yaml")):
        try:
            template = load_template(path, known)
        except TemplateError as exc:
            found.errors.append(str(exc))
            continue
        found.templates[template.name] = template
    return found


def resolve_template(name_or_path: str, directory: str | Path = TEMPLATES_DIR,
                     known_models: Iterable[str] | None = None) -> Template:
    """A template by name (a file in `directory`) or by the path of a YAML file. Raises TemplateError."""
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml"):
        return load_template(candidate, known_models)
    path = Path(directory) / f"{name_or_path}.yaml"
    if not path.exists():
        names = sorted(p.stem for p in Path(directory).glob("*.yaml"))
        raise TemplateError(f"unknown template '{name_or_path}'; known: {', '.join(names)} (or a .yaml file)")
    return load_template(path, known_models)
