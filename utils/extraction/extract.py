"""Extract a template's fields from a document with one model, through the one page runner.

Classic engines (no free-prompt task) recognise the pages' text and the fields are found by the
template's labels (utils/extraction/classic.py); vision-language models are asked for JSON page by
page (utils/extraction/vlm.py), the first value found for a field winning. Either way the result is
an Extraction whose problems say what is missing; a page that fails is a problem, not the end.
"""
from __future__ import annotations

import io
import threading
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from models.contract import RunOptions, TokenCallback
from utils.documents.reader import Document, DocumentError, open_document
from utils.engine.loader import Loader
from utils.engine.runner import PageStarted, run_pages
from utils.extraction.classic import Line, find_fields, lines_of
from utils.extraction.result import ExtractedField, Extraction, check_problems, empty_fields
from utils.extraction.templates import Template
from utils.extraction.vlm import max_new_tokens, read_fields


class PageFailed(RuntimeError):
    """A page the model could not answer; the message is the runner's one line."""


def engine_kind(loader: Loader, model: str) -> str:
    """"vlm" for a model that takes a free prompt, "classic" for an OCR engine."""
    return "vlm" if "prompt" in loader.settings.model(model).tasks else "classic"


def extract_document(loader: Loader, document: Document, template: Template, model: str,
                     pages: Sequence[int] | None = None, *, on_page: PageStarted | None = None,
                     on_token: TokenCallback | None = None, stop: threading.Event | None = None) -> Extraction:
    """The template's fields in `pages` (default: every page) of `document`.

    Raises ModelUnavailable (no page could succeed); every other failure is in the result."""
    indices = list(range(document.page_count) if pages is None else pages)
    extraction = Extraction(file=document.name, template=template.name, model=model,
                            fields=empty_fields(template), pages=indices)
    if engine_kind(loader, model) == "classic":
        notes = _classic(loader, document, template, model, indices, extraction, on_page, stop)
    else:
        notes = _vlm(loader, document, template, model, indices, extraction, on_page, on_token, stop)
    extraction.problems = check_problems(template, extraction, notes)
    return extraction


def _classic(loader, document, template, model, indices, extraction, on_page, stop) -> list[str]:
    lines: list[Line] = []
    errors: list[str] = []
    for outcome in run_pages(loader, document, indices, model, "text", on_page=on_page, stop=stop):
        if outcome.result is None:
            errors.append(outcome.error or f"page {outcome.page + 1}: no result")
        else:
            try:  # the page again, for where the words of each line lie (the engine gives line boxes)
                image = document.render(outcome.page).image
            except DocumentError:
                image = None
            lines += lines_of(outcome.result, outcome.page, image)
    if errors and not lines:
        extraction.error = errors[0] if len(errors) == 1 else f"{errors[0]} (and {len(errors) - 1} more pages)"
        return []
    extraction.fields = find_fields(template, lines, "classic", model)
    missing = [name for name in template.required() if extraction.fields[name].value is None]
    if missing and not (stop is not None and stop.is_set()):
        _second_look(loader, document, template, model, indices, extraction, missing)
    return errors


def _second_look(loader, document, template, model, indices, extraction, missing: list[str]) -> None:
    """Read the pages again at twice the resolution and take the required fields still missing.

    Tesseract reads best with letters some 20 pixels high or more; scans at 150 dpi or less, blurred
    or shrunk, lose characters and whole lines that it finds at double size. Only what is missing
    is taken, so a value read at the page's own size is never replaced."""
    lines: list[Line] = []
    for index in indices:
        try:
            image = document.render(index).image
            factor = min(2.0, (loader.settings.documents.max_page_pixels / (image.width * image.height)) ** 0.5)
            if factor <= 1.2:
                continue
            larger = image.resize((round(image.width * factor), round(image.height * factor)),
                                  Image.Resampling.LANCZOS)
            buffer = io.BytesIO()
            larger.save(buffer, format="PNG")
            page = open_document(f"{Path(document.name).stem}_x{factor:.1f}.png", buffer.getvalue(),
                                 loader.settings.documents)
        except DocumentError:
            continue
        for outcome in run_pages(loader, page, [0], model, "text"):
            if outcome.result is not None:
                lines += [_scaled(line, index, 1 / factor) for line in lines_of(outcome.result, 0, larger)]
    if not lines:
        return
    found = find_fields(template, lines, "classic", model)
    for name in missing:
        if found[name].value is not None:
            extraction.fields[name] = found[name]


def _scaled(line: Line, page: int, factor: float) -> Line:
    """A line read on an enlarged page, in the original page's index and pixels."""
    x1, y1, x2, y2 = (v * factor for v in line.bbox)
    words = tuple((a * factor, b * factor) for a, b in line.words) if line.words is not None else None
    return Line(page, line.text, (x1, y1, x2, y2), words)


def _vlm(loader, document, template, model, indices, extraction, on_page, on_token, stop) -> list[str]:
    notes: list[str] = []
    failed: list[str] = []
    for done, index in enumerate(indices):
        if stop is not None and stop.is_set():
            break
        if on_page is not None:
            on_page(done, len(indices), index)

        def ask(prompt: str, index: int = index) -> str:
            options = RunOptions(prompt=prompt, max_new_tokens=max_new_tokens(template))
            for outcome in run_pages(loader, document, [index], model, "prompt", options, on_token=on_token):
                if outcome.result is None:
                    raise PageFailed(outcome.error or f"page {index + 1}: no result")
                return outcome.result.text
            raise PageFailed(f"page {index + 1}: no result")

        try:
            fields, problems, answers = read_fields(ask, template, model)
        except PageFailed as exc:
            failed.append(str(exc))
            continue
        extraction.answers += answers
        prefix = f"page {index + 1}: " if len(indices) > 1 else ""
        notes += [prefix + problem for problem in problems]
        for name, field in fields.items():
            if extraction.fields[name].value is None and field.value is not None:
                extraction.fields[name] = ExtractedField(value=field.value, source=field.source, page=index)
    if failed and len(failed) == len(indices):
        extraction.error = failed[0] if len(failed) == 1 else f"{failed[0]} (and {len(failed) - 1} more pages)"
        return []
    return failed + notes
