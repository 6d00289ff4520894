"""PageResults to downloadable files: txt, md, json, and a zip for a multi-page document."""
from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

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


def page_text(result: PageResult, fmt: str) -> str:
    if fmt == "txt":
        return result.text
    if fmt == "md":
        return result.markdown or result.text
    if fmt == "json":
        return result.model_dump_json(indent=2)
    raise ValueError(f"unknown export format '{fmt}'; expected one of {', '.join(FORMATS)}")


def document_text(results: list[PageResult], fmt: str) -> str:
    """All pages of one document in one file (pages separated by a form feed in txt, a rule in md)."""
    if fmt == "json":
        return json.dumps([r.model_dump(mode="json") for r in results], ensure_ascii=False, indent=2)
    separator = "\f" if fmt == "txt" else "\n\n---\n\n"
    return separator.join(page_text(r, fmt) for r in results)


def page_filename(stem: str, result: PageResult, fmt: str) -> str:
    page = f"_p{result.page + 1}" if result.page is not None else ""
    return f"{stem}{page}_{result.model}.{fmt}"


def document_zip(source_name: str, results: list[PageResult]) -> bytes:
    """Every page in every format, plus whole-document files."""
    stem = Path(source_name).stem
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for result in results:
            for fmt in FORMATS:
                archive.writestr(f"pages/{page_filename(stem, result, fmt)}", page_text(result, fmt))
        for fmt in FORMATS:
            archive.writestr(f"{stem}.{fmt}", document_text(results, fmt))
    return buffer.getvalue()
