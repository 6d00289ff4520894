"""Accuracy of models against ground truth in a folder, through the same loader as the UI.

A folder holds documents (images and PDFs). For each document `<stem>.<ext>`:
- `<stem>.txt` is its ground truth (UTF-8); a multi-page document's pages are separated by a form
  feed (\\f). A document without one is listed under `missing_truth` and not run.
- `<stem>.keys`, optional, holds keywords, one a line, scored as keyword recall.

Pages run through utils.engine.runner.run_pages and are scored by utils.quality.scoring, the scorer
the Compare page uses: per document, CER and WER are the summed edit distance of its pages over the
summed reference length (normalised text); bag-of-words counts are summed over pages; keywords are
looked for in all its pages' text. A page that fails is listed with its error and the document is
scored on its other pages. A model's aggregate is the plain mean over its scored documents (each
document counts once), and the timing is the wall time of each page's recognition call minus the
model's load time, as p50/p95 over pages.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from utils.config import DocumentLimits, Settings
from utils.documents.reader import EXTENSIONS, DocumentError, open_path
from utils.engine.loader import Loader
from utils.engine.runner import run_pages
from utils.messages import one_line
from utils.quality import scoring


@dataclass(frozen=True)
class EvalItem:
    document: Path
    truth: Path | None
    keys: Path | None


@dataclass
class PageEval:
    page: int  # 1-based
    seconds: float | None = None
    inference_seconds: float | None = None
    load_seconds: float | None = None
    cer: float | None = None  # None when the page failed, or was scored joined with others
    wer: float | None = None
    char_errors: int | None = None
    reference_chars: int | None = None
    text: str = ""
    warnings: list[str] = field(default_factory=list)
    error: str | None = None  # this page could not be read or recognised; the others still count


@dataclass
class DocumentEval:
    file: str
    error: str | None = None
    notes: list[str] = field(default_factory=list)
    pages: list[PageEval] = field(default_factory=list)
    cer: float | None = None
    wer: float | None = None
    bow_precision: float | None = None
    bow_recall: float | None = None
    bow_f1: float | None = None
    keyword_recall: float | None = None
    keywords_missed: list[str] = field(default_factory=list)
    char_errors: int | None = None
    reference_chars: int | None = None

    @property
    def page_errors(self) -> int:
        return sum(p.error is not None for p in self.pages)


@dataclass
class ModelEval:
    model: str
    error: str | None = None
    documents: list[DocumentEval] = field(default_factory=list)

    def aggregate(self) -> dict:
        scored = [d for d in self.documents if d.error is None and d.cer is not None]
        seconds = [p.seconds for d in scored for p in d.pages if p.seconds is not None]
        loads = [p.load_seconds for d in self.documents for p in d.pages if p.load_seconds is not None]
        errors = sum(d.char_errors or 0 for d in scored)
        chars = sum(d.reference_chars or 0 for d in scored)
        return {
            "documents": len(scored),
            "pages": len(seconds),
            "errors": sum(d.error is not None for d in self.documents),
            "page_errors": sum(d.page_errors for d in self.documents if d.error is None),
            "mean_cer": _mean([d.cer for d in scored]),
            "mean_wer": _mean([d.wer for d in scored]),
            "mean_keyword_recall": _mean([d.keyword_recall for d in scored if d.keyword_recall is not None]),
            "mean_bow_f1": _mean([d.bow_f1 for d in scored]),
            "mean_bow_recall": _mean([d.bow_recall for d in scored]),
            "corpus_cer": errors / chars if chars else None,
            "seconds_p50": percentile(seconds, 50),
            "seconds_p95": percentile(seconds, 95),
            "load_seconds": loads[0] if loads else None,
        }


@dataclass
class EvalReport:
    folder: str
    task: str
    models: list[ModelEval]
    missing_truth: list[str]

    def to_json(self) -> dict:
        return {
            "folder": self.folder,
            "task": self.task,
            "normalisation": "utils.quality.metrics.normalize: NFC, invisible chars removed, dashes/quotes/ellipsis "
                             "to ASCII, whitespace folded; case kept",
            "missing_truth": self.missing_truth,
            "models": {m.model: {"error": m.error, "aggregate": m.aggregate(),
                                 "documents": [asdict(d) for d in m.documents]} for m in self.models},
        }


ProgressCallback = Callable[[str, int, int, DocumentEval], None]


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None


def percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def parse_model_list(spec: str | None, settings: Settings) -> list[str]:
    """"a,b" -> ["a", "b"], checked against the config; None -> the config's default_models."""
    names = [n.strip() for n in spec.split(",") if n.strip()] if spec else list(settings.default_models)
    unknown = [n for n in names if n not in settings.models]
    if unknown or not names:
        raise ValueError(f"unknown model(s) {', '.join(unknown) or '(none given)'}; "
                         f"known: {', '.join(settings.models)}")
    return list(dict.fromkeys(names))


def find_items(folder: Path) -> list[EvalItem]:
    """Documents in the folder (not recursive), sorted by name, with their truth and keyword files."""
    items = []
    for path in sorted(Path(folder).iterdir()):
        if path.is_file() and path.suffix.lower() in EXTENSIONS:
            truth = path.with_suffix(".txt")
            keys = path.with_suffix(".keys")
            items.append(EvalItem(path, truth if truth.is_file() else None, keys if keys.is_file() else None))
    return items


def read_keywords(path: Path | None) -> list[str]:
    if path is None:
        return []
    return [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines() if line.strip()]


def _apply_score(doc: DocumentEval, score: scoring.DocumentScore) -> None:
    doc.cer, doc.wer = score.cer, score.wer
    doc.bow_precision, doc.bow_recall, doc.bow_f1 = score.bow_precision, score.bow_recall, score.bow_f1
    doc.keyword_recall, doc.keywords_missed = score.keyword_recall, list(score.keywords_missed)
    doc.char_errors, doc.reference_chars = score.char_errors, score.reference_chars
    doc.notes.extend(score.notes)
    for page in doc.pages:
        own = score.page(page.page - 1)
        if own is not None:
            page.cer, page.wer = own.cer, own.wer
            page.char_errors, page.reference_chars = own.char_errors, own.reference_chars


def evaluate_document(loader: Loader, model: str, item: EvalItem, task: str = "text",
                      limits: DocumentLimits | None = None) -> DocumentEval:
    """Run one model over one document and score it; every failure is recorded, never raised.

    The pages that have a part in the ground truth are run (all of them when it has one part per
    page); a page that fails is recorded with its error and the document is scored on the others.
    """
    doc = DocumentEval(file=item.document.name)
    try:
        if item.truth is None:
            raise DocumentError(f"{item.document.name}: no ground truth (.txt) beside it")
        reference = item.truth.read_text(encoding="utf-8-sig")
        keywords = read_keywords(item.keys)
        document = open_path(item.document, limits)
        parts = len(scoring.reference_parts(reference))
        if parts != document.page_count:
            doc.notes.append(f"ground truth has {parts} page(s), the document {document.page_count}; "
                             f"scoring the first {min(parts, document.page_count)}")
        texts: dict[int, str] = {}
        for outcome in run_pages(loader, document, range(min(parts, document.page_count)), model, task):
            result = outcome.result
            if result is None:
                doc.pages.append(PageEval(page=outcome.page + 1, error=outcome.error))
                doc.notes.append(f"not scored: {outcome.error}")
                continue
            texts[outcome.page] = scoring.scored_text(result)
            doc.pages.append(PageEval(
                page=outcome.page + 1, seconds=(outcome.wall_seconds or 0.0) - (result.load_seconds or 0.0),
                inference_seconds=result.seconds, load_seconds=result.load_seconds, text=texts[outcome.page],
                warnings=list(result.warnings)))
        if not texts:
            doc.error = next(p.error for p in doc.pages if p.error) if doc.pages else \
                f"{item.document.name}: no page to score"
            return doc
        _apply_score(doc, scoring.score_document(texts, reference, document.page_count, keywords))
    except DocumentError as exc:
        doc.error = one_line(exc)
    except UnicodeDecodeError as exc:
        doc.error = f"{item.truth.name if item.truth else item.document.name}: not UTF-8 text ({exc.reason})"
    except Exception as exc:  # a failing model must not end the evaluation of the other documents
        doc.error = f"{item.document.name}: {type(exc).__name__}: {one_line(exc)}"
    return doc


def evaluate(folder: Path, models: list[str], loader: Loader, task: str = "text",
             limits: DocumentLimits | None = None, on_progress: ProgressCallback | None = None) -> EvalReport:
    """Every model over every document of the folder that has ground truth; one model at a time."""
    items = find_items(folder)
    scored = [item for item in items if item.truth is not None]
    report = EvalReport(folder=str(folder), task=task, models=[],
                        missing_truth=[item.document.name for item in items if item.truth is None])
    for model in models:
        entry = ModelEval(model)
        report.models.append(entry)
        availability = loader.status(model).availability
        if not availability.available:
            entry.error = f"{model} is {availability.status}: {availability.reason}"
            continue
        for number, item in enumerate(scored, 1):
            doc = evaluate_document(loader, model, item, task, limits)
            entry.documents.append(doc)
            if on_progress:
                on_progress(model, number, len(scored), doc)
    return report


def _fmt(value: float | None, percent: bool = False) -> str:
    if value is None:
        return "—"
    return f"{value * 100:.1f}%" if percent else f"{value:.2f}"


TABLE_COLUMNS = ("model", "docs", "pages", "errors", "CER", "WER", "keyword recall", "BoW F1",
                 "s/page p50", "s/page p95")


def table_rows(report: EvalReport) -> list[list[str]]:
    rows = []
    for entry in report.models:
        if entry.error:
            rows.append([entry.model, "—", "—", "—", "—", "—", "—", "—", "—", "—"])
            continue
        a = entry.aggregate()
        rows.append([entry.model, str(a["documents"]), str(a["pages"]), str(a["errors"]),
                     _fmt(a["mean_cer"], True), _fmt(a["mean_wer"], True), _fmt(a["mean_keyword_recall"], True),
                     _fmt(a["mean_bow_f1"], True), _fmt(a["seconds_p50"]), _fmt(a["seconds_p95"])])
    return rows


def markdown_table(header: tuple[str, ...] | list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def document_rows(entry: ModelEval) -> list[list[str]]:
    rows = []
    for doc in entry.documents:
        if doc.error:
            rows.append([doc.file, "—", "—", "—", "—", "—", doc.error])
            continue
        seconds = sum(p.seconds for p in doc.pages if p.seconds is not None)
        rows.append([doc.file, str(len(doc.pages)), _fmt(doc.cer, True), _fmt(doc.wer, True),
                     _fmt(doc.bow_f1, True), _fmt(seconds), "; ".join(doc.notes)])
    return rows


DOCUMENT_COLUMNS = ("document", "pages", "CER", "WER", "BoW F1", "seconds", "notes")


def format_report(report: EvalReport, per_document: bool = True) -> str:
    """Plain-text report: per model its documents, then one summary table (markdown syntax)."""
    parts = []
    if per_document:
        for entry in report.models:
            parts.append(f"## {entry.model}")
            parts.append(f"error: {entry.error}" if entry.error
                         else markdown_table(DOCUMENT_COLUMNS, document_rows(entry)))
    parts.append(f"## Summary (task {report.task}, mean over documents)")
    parts.append(markdown_table(TABLE_COLUMNS, table_rows(report)))
    if report.missing_truth:
        parts.append(f"no ground truth (.txt), not evaluated: {', '.join(report.missing_truth)}")
    return "\n\n".join(parts)
