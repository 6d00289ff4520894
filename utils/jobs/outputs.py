"""A job's files, written from the store (so a resumed job's output is complete): per document and
model, one file per page and format, a combined markdown, optionally a searchable PDF; and a
summary.csv with one row per page. The same files go to a folder (the CLI) or a zip (the Batch page).
"""
from __future__ import annotations

import csv
import io
import zipfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path, PurePosixPath

from models.contract import PageResult
from utils.documents.export import FORMATS, document_text, page_filename, page_text
from utils.documents.reader import Document
from utils.messages import one_line
from utils.store import JobDocument, Store

OUTPUT_FORMATS = (*FORMATS, "pdf")
SUMMARY_FIELDS = ("file", "page", "model", "task", "chars", "seconds", "status", "error")


def parse_formats(value: str) -> tuple[str, ...]:
    formats = tuple(dict.fromkeys(part.strip().lower() for part in value.split(",") if part.strip()))
    unknown = [f for f in formats if f not in OUTPUT_FORMATS]
    if unknown or not formats:
        raise ValueError(f"--format {value!r}: expected a comma-separated list of {', '.join(OUTPUT_FORMATS)}")
    return formats


def _folders(documents: Sequence[JobDocument]) -> dict[int, str]:
    """A folder per document, from its name without the extension; a second "a.png" beside "a.pdf"
    keeps its extension in the folder's name."""
    taken: set[str] = set()
    folders = {}
    for document in documents:
        path = PurePosixPath(document.name)
        parts = [p for p in path.parent.parts if p not in ("", ".", "..", "/")]
        folder = "/".join([*parts, path.stem or "document"])
        if folder in taken:
            folder = "/".join([*parts, path.name.replace(".", "_")])
        taken.add(folder)
        folders[document.position] = folder
    return folders


def job_files(store: Store, job_id: int, formats: Sequence[str],
              open_source: Callable[[JobDocument], Document | None] | None = None,
              notes: list[str] | None = None) -> Iterator[tuple[str, bytes]]:
    """(relative path, content) of every output file of the job, summary.csv last. `open_source` gives
    a document's source for its searchable PDF (default: the copy kept in the store). With `notes`, a
    PDF that cannot be made is noted there and the other files still come."""
    job = store.jobs.get(job_id)
    if job is None:
        raise KeyError(f"no job {job_id}")
    documents = store.jobs.documents(job_id)
    folders = _folders(documents)
    pages = store.jobs.pages(job_id)
    rows: list[dict] = []
    for document in documents:
        if document.error:
            rows.append({"file": document.name, "page": "", "model": "", "task": job.task, "chars": "",
                         "seconds": "", "status": "error", "error": document.error})
            continue
        stem = PurePosixPath(document.name).stem
        for model in job.models:
            results: list[PageResult] = []
            for item in (p for p in pages if p.position == document.position and p.model == model):
                stored = store.get(item.result_id) if item.result_id is not None else None
                status = item.status if item.status != "done" or stored else "deleted"
                rows.append({"file": document.name, "page": item.page + 1, "model": model, "task": job.task,
                             "chars": len(stored.result.text) if stored else "",
                             "seconds": f"{item.seconds:.3f}" if item.seconds is not None else "",
                             "status": status, "error": item.error or ""})
                if stored is None:
                    continue
                result = stored.result
                results.append(result)
                for fmt in formats:
                    if fmt != "pdf":
                        name = page_filename(stem, result, fmt)
                        yield f"{folders[document.position]}/{name}", page_text(result, fmt).encode()
            if not results:
                continue
            base = f"{folders[document.position]}/{stem}_{model}"
            yield f"{base}.md", document_text(results, "md").encode()
            if "pdf" in formats:
                try:
                    pdf = _pdf(store, document, results, open_source)
                except Exception as exc:  # one document's PDF failing must not lose the other files
                    if notes is None:
                        raise
                    notes.append(f"{document.name}: no searchable PDF ({one_line(exc)})")
                else:
                    yield f"{base}.pdf", pdf
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=SUMMARY_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    yield "summary.csv", buffer.getvalue().encode()


def _pdf(store: Store, document: JobDocument, results: list[PageResult],
         open_source: Callable[[JobDocument], Document | None] | None) -> bytes:
    from utils.documents.searchable_pdf import document_pdf

    source = open_source(document) if open_source else None
    if source is None and document.digest:
        source = store.open_document(document.digest, document.name)
    if source is None:
        raise FileNotFoundError("its source document is no longer available")
    return document_pdf(source, results)


def write_outputs(store: Store, job_id: int, out_dir: str | Path, formats: Sequence[str],
                  open_source: Callable[[JobDocument], Document | None] | None = None,
                  notes: list[str] | None = None) -> list[Path]:
    out = Path(out_dir)
    written = []
    for relative, content in job_files(store, job_id, formats, open_source, notes):
        target = out / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
        written.append(target)
    return written


def job_zip(store: Store, job_id: int, formats: Sequence[str] = OUTPUT_FORMATS,
            notes: list[str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for relative, content in job_files(store, job_id, formats, notes=notes):
            archive.writestr(relative, content)
    return buffer.getvalue()
