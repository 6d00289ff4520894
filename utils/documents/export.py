"""PageResults to downloadable files: txt, md, json, and a zip for a multi-page document.

A user's correction of a page's text replaces that text in txt and md; json keeps the recognised
result whole and adds the correction beside it, and the free prompt when the task had one.
"""
from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import PurePath

from models.contract import PageResult

FORMATS = ("txt", "md", "json")
# Fields of each page in `cli.py ocr --format json` and the HTTP API's /v1/ocr, in this order; a page
# that failed has only page, model, task and error set (the others null).
PAGE_FIELDS = ("page", "model", "task", "text", "markdown", "blocks", "raw", "device", "dtype", "profile",
               "seconds", "load_seconds", "tokens", "truncated", "warnings", "error")


def page_json(result: PageResult) -> dict:
    """One page as the CLI and the API report it: 1-based page number, the fields above."""
    data = result.model_dump(mode="json")
    data["page"] = (result.page or 0) + 1
    return {key: data.get(key) for key in PAGE_FIELDS}


def failed_page_json(page: int, model: str, task: str, error: str | None) -> dict:
    """A page (0-based) that has no result, as the CLI and the API report it."""
    return {key: None for key in PAGE_FIELDS} | {"page": page + 1, "model": model, "task": task, "error": error}


def result_json(result: PageResult, *, correction: str | None = None, prompt: str | None = None) -> dict:
    """A download's JSON: the recognised result whole, the prompt it was asked with, and the user's
    correction beside it."""
    data = result.model_dump(mode="json")
    if prompt is not None:
        data["prompt"] = prompt
    if correction is not None:
        data["corrected_text"] = correction
    return data


def page_text(result: PageResult, fmt: str, *, correction: str | None = None, prompt: str | None = None) -> str:
    if fmt == "txt":
        return result.text if correction is None else correction
    if fmt == "md":
        return correction if correction is not None else (result.markdown or result.text)
    if fmt == "json":
        return json.dumps(result_json(result, correction=correction, prompt=prompt), ensure_ascii=False, indent=2)
    raise ValueError(f"unknown export format '{fmt}'; expected one of {', '.join(FORMATS)}")


def _line_ended(text: str) -> str:
    return text if not text or text.endswith("\n") else text + "\n"


def document_text(results: Sequence[PageResult], fmt: str, *, corrections: Mapping[int, str] | None = None,
                  prompt: str | None = None) -> str:
    """All pages of one document in one file. In txt each page ends with a newline and pages are
    separated by a form feed (so a page's last word never runs into the next page's first); in md
    pages are separated by a rule. `corrections` are by page index (result.page)."""
    corrections = corrections or {}

    def correction(result: PageResult) -> str | None:
        return corrections.get(result.page) if result.page is not None else None

    if fmt == "json":
        pages = [result_json(r, correction=correction(r), prompt=prompt) for r in results]
        return json.dumps(pages, ensure_ascii=False, indent=2)
    texts = [page_text(r, fmt, correction=correction(r)) for r in results]
    if fmt == "txt":
        return "\f".join(_line_ended(text) for text in texts)
    return "\n\n---\n\n".join(texts)


def page_filename(stem: str, result: PageResult, fmt: str) -> str:
    """The name of one page's file in a batch job's output folder (one task per job)."""
    page = f"_p{result.page + 1}" if result.page is not None else ""
    return f"{stem}{page}_{result.model}.{fmt}"


def page_ranges(pages: Sequence[int]) -> str:
    """0-based page indices as 1-based ranges: [1, 2, 4] -> "2-3_5" (safe in a file name)."""
    runs: list[list[int]] = []
    for page in sorted(set(pages)):
        if runs and page == runs[-1][-1] + 1:
            runs[-1].append(page)
        else:
            runs.append([page])
    return "_".join(f"{run[0] + 1}" if len(run) == 1 else f"{run[0] + 1}-{run[-1] + 1}" for run in runs)


def download_name(source_name: str, pages: Sequence[int], task: str, model: str, fmt: str,
                  page_count: int | None = None) -> str:
    """A download's file name says which document, which pages (unless the document has one page),
    which task and which model: report_p2-3_text_tesseract.txt."""
    stem = PurePath(source_name).stem
    where = f"_p{page_ranges(pages)}" if pages and page_count != 1 else ""
    return f"{stem}{where}_{task}_{model}.{fmt}"


def document_zip(source_name: str, results: Sequence[PageResult], *, corrections: Mapping[int, str] | None = None,
                 prompt: str | None = None, page_count: int | None = None) -> bytes:
    """Every page in every format, plus whole-document files."""
    corrections = corrections or {}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for result in results:
            page = [result.page] if result.page is not None else []
            fix = corrections.get(result.page) if result.page is not None else None
            for fmt in FORMATS:
                name = download_name(source_name, page, result.task, result.model, fmt, page_count)
                archive.writestr(f"pages/{name}", page_text(result, fmt, correction=fix, prompt=prompt))
        if results:
            pages = [r.page for r in results if r.page is not None]
            first = results[0]
            for fmt in FORMATS:
                name = download_name(source_name, pages, first.task, first.model, fmt, page_count)
                archive.writestr(name, document_text(results, fmt, corrections=corrections, prompt=prompt))
    return buffer.getvalue()
