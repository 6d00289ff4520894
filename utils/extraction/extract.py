"""Extract a template's fields from a document with one model, through the one page runner.

Classic engines (no free-prompt task) recognise the pages' text and the fields are found by the
template's labels (utils/extraction/classic.py); the lines a doubtful required field rests on are
read again on their own (`_read_again`), and the pages at twice their size when a required field is
still missing (`_second_look`), always through the page runner. Vision-language models are asked
for JSON page by page (utils/extraction/vlm.py), the first value found for a field winning. Either
way the result is an Extraction whose problems say what is missing; a page that fails is a problem,
not the end.
"""
from __future__ import annotations

import io
import threading
import unicodedata
from collections.abc import Sequence
from functools import partial
from pathlib import Path

from PIL import Image

from models.classic.script import dominant_script, script_letters, split_by_script
from models.contract import RunOptions, TokenCallback
from models.registry import adapter_class
from utils.documents.reader import Document, DocumentError, open_document
from utils.engine.loader import Loader
from utils.engine.runner import PageStarted, run_pages
from utils.extraction.classic import Line, field_lines, find_fields, labels_kept, line_sheet, lines_of, read_back
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
            image = None
            if any(block.text.strip() and not block.words for block in outcome.result.blocks):
                try:  # the page again, for where the words of each line lie (the engine gave line boxes only)
                    image = document.render(outcome.page).image
                except DocumentError:
                    image = None
            lines += lines_of(outcome.result, outcome.page, image)
    if errors and not lines:
        extraction.error = errors[0] if len(errors) == 1 else f"{errors[0]} (and {len(errors) - 1} more pages)"
        return []
    first = find_fields(template, lines, "classic", model)
    if not (stop is not None and stop.is_set()):
        lines = _read_again(loader, document, template, model, lines)
    extraction.fields = find_fields(template, lines, "classic", model)
    for name, field in first.items():  # a reading again that lost a value never costs it
        if extraction.fields[name].value is None and field.value is not None:
            extraction.fields[name] = field
    missing = [name for name in template.required() if extraction.fields[name].value is None]
    if missing and not (stop is not None and stop.is_set()):
        _second_look(loader, document, template, model, indices, extraction, missing)
    return errors


READ_AGAIN_ROUNDS = 3


def _read_again(loader: Loader, document: Document, template: Template, model: str, lines: list[Line]) -> list[Line]:
    """The lines a doubtful required field rests on (its labels' and its value's lines), read again on
    their own at a few sizes, in the Latin languages alone where line and page are Latin; returns all
    the lines with each of those replaced by its best reading.

    A field is doubtful when it has labels but no value, when its value is only part of a word ("1" of
    "1№\\/003465") or a code that needed repair ("INVO03465") or looks misread ("Б1-000267"), or when
    on a Latin page its lines hold letters of another script or a "№": a page read with Russian and
    English at once reads Latin letters as Cyrillic ones or signs now and then ("INV" as "1№\\/", "NW1"
    as "№1"). Fields read cleanly are left alone: reading again costs time and, on a noisy scan, is as
    likely to add a misreading as to take one away.

    The best reading is the one that leaves the most required fields found, then the fewest doubtful,
    then the one whose least sure word the engine is surest of; the first reading competes too, except
    where the Latin languages read the line again (confidences of two language sets do not compare). A
    reading that loses a label the first one had (a word, not a sign) is never taken. A line that
    changes may point elsewhere (a "№" that was an "NW" is no label), so the fields are looked for
    again and the lines they now rest on are judged in turn, a few rounds at most."""
    latin = _latin_languages(loader, model)
    images: dict[int, Image.Image | None] = {}
    done: set[Line] = set()
    for _ in range(READ_AGAIN_ROUNDS):
        fields, used = field_lines(template, lines, "classic", model)
        latin_pages = {page for page in {line.page for line in lines}
                       if latin is not None and _script([line for line in lines if line.page == page]) == "Latin"}
        todo: list[Line] = []
        for name in template.required():
            rest = used[name]
            foreign = any(line.page in latin_pages and _foreign_to_latin(line.text) for line in rest.lines)
            if fields[name].value is None or rest.doubtful or foreign:
                todo += [line for line in rest.lines if line not in done]
        todo = list(dict.fromkeys(todo))
        if not todo:
            break
        done.update(todo)
        replaced: dict[Line, list[Line]] = {}
        for page in sorted({line.page for line in todo}):
            if page not in images:
                try:
                    images[page] = document.render(page).image
                except DocumentError:
                    images[page] = None
            image = images[page]
            if image is None:
                continue
            groups: dict[str | None, list[Line]] = {}
            for line in todo:
                if line.page == page:
                    in_latin = page in latin_pages and _script([line], min_letters=0) in ("Latin", None)
                    groups.setdefault(latin if in_latin else None, []).append(line)
            for languages, group in groups.items():
                readings = _read_sheet(loader, document, model, image, group, languages)
                for line in group:
                    options = [new for new in readings.get(line, [])
                               if labels_kept(template, line, new, "classic", model)]
                    if languages is None:
                        options.insert(0, [line])
                    if options:
                        best = max(options, key=partial(_quality, template, model, lines, line))
                        if best != [line]:
                            replaced[line] = best
        for new in replaced.values():
            done.update(new)
        lines = [new for line in lines for new in replaced.get(line, [line])]
    return lines


def _quality(template: Template, model: str, lines: list[Line], line: Line, new: list[Line]
             ) -> tuple[int, int, float]:
    """How good the page's fields are with `line` read as `new`: required fields found, minus the
    doubtful ones, then the engine's confidence in the reading's least sure word."""
    fields, used = field_lines(template, [n for other in lines for n in (new if other == line else [other])],
                               "classic", model)
    required = template.required()
    weakest = [n.weakest for n in new if n.weakest is not None]
    return (sum(fields[name].value is not None for name in required), -sum(used[name].doubtful for name in required),
            min(weakest) if weakest else 0.0)


def _foreign_to_latin(text: str) -> bool:
    """Letters of another script, or a "№" (no Latin-script language writes it), in a line."""
    return "№" in text or any(ch.isalpha() and not ("a" <= ch.lower() <= "z" or unicodedata.name(ch, "")
                                                     .startswith("LATIN")) for ch in text)


def _read_sheet(loader: Loader, document: Document, model: str, image: Image.Image, lines: list[Line],
                languages: str | None) -> dict[Line, list[list[Line]]]:
    """Each line's readings on a sheet of its own (one per size), through the page runner."""
    sheet = line_sheet(image, lines)
    buffer = io.BytesIO()
    sheet.image.save(buffer, format="PNG")
    try:
        page = open_document(f"{Path(document.name).stem}_lines.png", buffer.getvalue(), loader.settings.documents)
    except DocumentError:
        return {}
    readings: dict[Line, list[list[Line]]] = {}
    for outcome in run_pages(loader, page, [0], model, "text", RunOptions(languages=languages)):
        if outcome.result is not None:
            for row, read in zip(sheet.rows, read_back(sheet, outcome.result)):
                if read:
                    readings.setdefault(row.line, []).append(read)
    return readings


def _script(lines: list[Line], min_letters: int = 12) -> str | None:
    """The script of most letters in these lines' words of three letters or more (None: mixed, or
    fewer than `min_letters` letters)."""
    counts = script_letters(word for line in lines for word in line.text.split())
    return dominant_script(counts, min_letters=min_letters) if counts else None


def _latin_languages(loader: Loader, model: str) -> str | None:
    """The Latin-script languages of an engine configured for several scripts ("eng" of "rus+eng");
    None when it reads one script only or has no languages to choose."""
    spec = loader.settings.model(model)
    languages = getattr(adapter_class(spec).Options.model_validate(spec.options), "languages", None)
    if not isinstance(languages, str):
        return None
    own, other = split_by_script(languages.split("+"), "Latin")
    return "+".join(own) if own and other else None


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
