"""Command line: the same loader as the UI.

  python cli.py models
  python cli.py ocr FILE... --model NAME [--task text|markdown|layout] [--pages 1-3]
                           [--format json|txt|md] [--out DIR] [--model-path DIR]
                           [--backend local|openai] [--base-url URL] [--concurrency N]
  python cli.py eval DIR [--models a,b] [--task text] [--json]
  python cli.py bench DIR [--models a,b] [--out bench_out] [--limit N]
  python cli.py serve [--host 127.0.0.1] [--port 8000]
  python cli.py reparse --model NAME --task TASK --raw FILE --page-size W H [--format json|txt|md]
  python cli.py batch INPUT... --model NAME[,NAME] --out DIR [--task T] [--workers N] [--db PATH]
                     [--backend local|openai] [--base-url URL] [--concurrency N]
  python cli.py chat FILE --model NAME [--pages 1-3] -q QUESTION [-q FOLLOW-UP ...] [--model-path DIR] [--db PATH]
                    [--backend local|openai] [--base-url URL]
  python cli.py history [--json] [--document D] [--model M] [--task T] [--search TEXT] [--db PATH]
  python cli.py extract FILE... --template NAME|FILE.yaml [--model NAME] [--pages 1-3] [--format json|csv]
"""
from __future__ import annotations

import argparse
import json
import sqlite3
import sys
from pathlib import Path

from models.contract import TASKS, RunOptions
from utils.config import ConfigError, Settings, cached_settings, with_backend
from utils.documents.export import document_text, failed_page_json, page_json
from utils.documents.reader import DocumentError, open_document, open_path
from utils.engine.loader import Loader
from utils.engine.runner import PageOutcome, run_pages
from utils.messages import one_line


class UsageError(Exception):
    """Wrong command-line usage: exit code 2."""


def settings_with_model_path(settings: Settings, model: str, model_path: str | None) -> Settings:
    if model not in settings.models:
        raise UsageError(f"unknown model '{model}'; known: {', '.join(settings.models)}")
    if model_path is None:
        return settings
    if not Path(model_path).is_dir():
        raise UsageError(f"--model-path {model_path}: not a directory")
    settings = settings.model_copy(deep=True)
    settings.models[model].local_path = str(Path(model_path).resolve())
    return settings


def settings_with_backend(settings: Settings, args: argparse.Namespace, model: str) -> Settings:
    """--backend / --base-url / --concurrency: run `model` on another backend than config.yaml says."""
    backend, base_url, concurrency = args.backend, args.base_url, args.concurrency
    if backend is None and base_url is None and concurrency is None:
        return settings
    if (backend or settings.models[model].backend) != "openai":
        raise UsageError("--base-url and --concurrency need --backend openai")
    if concurrency is not None and concurrency < 1:
        raise UsageError("--concurrency must be at least 1")
    try:
        return with_backend(settings, model, backend, base_url, concurrency)
    except ConfigError as exc:
        raise UsageError(str(exc).removeprefix("command line: ")) from None


def cmd_models(args: argparse.Namespace) -> int:
    loader = Loader(cached_settings())
    try:
        default = loader.default_model()
        for status in loader.catalog():
            a = status.availability
            mark = "*" if status.name == default else " "
            print(f"{mark} {status.name:<14} {a.status:<15} {status.label}  [{', '.join(status.tasks)}]")
            if a.reason:
                print(f"    {a.reason}")
            if a.fix and not a.available:
                print(f"    to fix: {a.fix}")
        print("(* = default)")
    finally:
        loader.close()
    return 0


def _outcome_json(outcome: PageOutcome) -> dict:
    """A page of a run: its result's fields, or only page, model, task and the page's error."""
    if outcome.result is not None:
        return page_json(outcome.result)
    return failed_page_json(outcome.page, outcome.key.model, outcome.key.task, outcome.error)


def cmd_ocr(args: argparse.Namespace) -> int:
    settings = settings_with_model_path(cached_settings(), args.model, args.model_path)
    settings = settings_with_backend(settings, args, args.model)
    if args.task not in settings.models[args.model].tasks:
        raise UsageError(f"{args.model} does not do '{args.task}'; it supports: "
                         f"{', '.join(settings.models[args.model].tasks)}")
    if args.format == "pdf" and not args.out:
        raise UsageError("--format pdf writes files: give --out DIR")
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
    loader = Loader(settings)
    documents = []
    try:
        try:
            loader.check_languages(args.model, args.languages)
        except ValueError as exc:
            raise UsageError(f"--languages: {exc}") from None
        for file in args.files:
            entry: dict = {"file": file, "error": None, "pages": []}
            documents.append(entry)
            results = []
            name = Path(file).name
            try:
                document = open_path(file, settings.documents)
                selection = document.select(args.pages)

                def started(done: int, total: int, index: int, name: str = name,
                            count: int = document.page_count) -> None:
                    print(f"{name}: page {index + 1}/{count} with {args.model}…", file=sys.stderr)

                for outcome in run_pages(loader, document, selection.indices, args.model, args.task,
                                         RunOptions(languages=args.languages), on_page=started,
                                         warnings=selection.warnings):
                    entry["pages"].append(_outcome_json(outcome))
                    if outcome.result is not None:
                        results.append(outcome.result)
                    else:
                        print(f"error: {outcome.error}", file=sys.stderr)
            except DocumentError as exc:
                entry["error"] = one_line(exc)
            except Exception as exc:  # every failure is reported per document; the others still run
                entry["error"] = f"{name}: {one_line(exc)}"
            if entry["error"]:
                print(f"error: {entry['error']}", file=sys.stderr)
            if results and args.out:
                target = Path(args.out) / f"{Path(file).stem}.{args.format}"
                if args.format == "pdf":
                    from utils.documents.searchable_pdf import document_pdf

                    target.write_bytes(document_pdf(document, results))
                else:
                    body = json.dumps(entry, ensure_ascii=False, indent=2) if args.format == "json" \
                        else document_text(results, args.format)
                    target.write_text(body, encoding="utf-8")
                print(f"wrote {target}", file=sys.stderr)
            elif results and args.format != "json":
                print(document_text(results, args.format))
        events = [e.model_dump(mode="json") for e in loader.recovery_events()]
    finally:
        loader.close()
    if args.format == "json" and not args.out:
        json.dump({"documents": documents, "recovery_events": events}, sys.stdout, ensure_ascii=False, indent=2)
        print()
    failed = any(d["error"] or any(p["error"] for p in d["pages"]) for d in documents)
    return 1 if failed else 0


def _models_over_folder(args: argparse.Namespace, settings: Settings) -> list[str]:
    """The --models of eval/bench, checked, and the folder they run over."""
    from utils.quality.evaluation import parse_model_list

    try:
        models = parse_model_list(args.models, settings)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if not Path(args.dir).is_dir():
        raise UsageError(f"{args.dir}: not a directory")
    return models


def cmd_eval(args: argparse.Namespace) -> int:
    from utils.quality.evaluation import evaluate, format_report

    settings = cached_settings()
    models = _models_over_folder(args, settings)
    for model in models:
        if args.task not in settings.models[model].tasks:
            raise UsageError(f"{model} does not do '{args.task}'; it supports: "
                             f"{', '.join(settings.models[model].tasks)}")

    def progress(model: str, number: int, total: int, doc) -> None:
        state = f"error: {doc.error}" if doc.error else f"CER {doc.cer:.1%}, {len(doc.pages)} page(s)" + (
            f", {doc.page_errors} failed" if doc.page_errors else "")
        print(f"eval {model} {number}/{total} {doc.file}: {state}", file=sys.stderr)

    loader = Loader(settings)
    try:
        report = evaluate(Path(args.dir), models, loader, args.task, settings.documents, progress)
    finally:
        loader.close()
    if args.json:
        json.dump(report.to_json(), sys.stdout, ensure_ascii=False, indent=2)
        print()
        if report.missing_truth:
            print(f"no ground truth, not evaluated: {', '.join(report.missing_truth)}", file=sys.stderr)
    else:
        print(format_report(report))
    failed = any(m.error or any(d.error or d.page_errors for d in m.documents) for m in report.models)
    return 1 if failed else 0


def cmd_bench(args: argparse.Namespace) -> int:
    import tempfile

    from utils.quality.benchmark import format_report, run_benchmark, write_outputs

    settings = cached_settings()
    models = _models_over_folder(args, settings)
    if args.limit is not None and args.limit < 1:
        raise UsageError("--limit must be at least 1")
    with tempfile.TemporaryDirectory(prefix="bench_pages_") as work:
        report = run_benchmark(Path(args.dir), models, settings, Path(work), args.limit,
                               on_progress=lambda line: print(line, file=sys.stderr))
    print(format_report(report))
    for path in write_outputs(report, Path(args.out)):
        print(f"wrote {path}", file=sys.stderr)
    failed = any(row.error or row.page_errors for row in report.rows) or report.document_errors
    return 1 if failed else 0


def cmd_reparse(args: argparse.Namespace) -> int:
    """A saved raw VLM output parsed again, as the model's adapter parses it for a page of that size;
    the input size comes from the model's pixel budget in config.yaml (or --max-pixels)."""
    from models.contract import RunOptions
    from models.registry import adapter_class
    from models.vlm.base import VLMAdapter

    settings = cached_settings()
    spec = settings.models.get(args.model)
    adapter_type = adapter_class(spec) if spec else None
    if spec is None or adapter_type is None or not issubclass(adapter_type, VLMAdapter):
        vlms = [name for name, entry in settings.models.items() if issubclass(adapter_class(entry), VLMAdapter)]
        raise UsageError(f"{args.model!r} has no raw model output to re-parse; models that do: {', '.join(vlms)}")
    if args.task not in spec.tasks:
        raise UsageError(f"{args.model} does not do '{args.task}'; it supports: {', '.join(spec.tasks)}")
    if min(args.page_size) < 1 or (args.max_pixels is not None and args.max_pixels < 1):
        raise UsageError("--page-size and --max-pixels must be positive")
    try:
        raw = Path(args.raw).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--raw {args.raw}: {one_line(exc)}") from None
    adapter = adapter_type(args.model, spec, settings.profile)
    width, height = args.page_size
    try:
        result, input_size = adapter.reparse(raw, args.task, (width, height), RunOptions(max_pixels=args.max_pixels))
    except ValueError as exc:  # a page the model could not take (aspect ratio)
        raise UsageError(one_line(exc)) from None
    if args.format == "json":
        json.dump({**page_json(result), "input_size": list(input_size)}, sys.stdout, ensure_ascii=False, indent=2)
        print()
    else:
        print(document_text([result], args.format))
    return 0


def _open_store(settings: Settings, db: str | None):
    from utils.store import SchemaError, Store

    try:
        if db is None:
            return Store.from_settings(settings)
        return Store(Path(db).expanduser().resolve(), None, settings.store.max_files_mb, settings.documents)
    except (SchemaError, OSError, sqlite3.Error) as exc:
        raise UsageError(f"results store: {one_line(exc)}") from None


def cmd_batch(args: argparse.Namespace) -> int:
    """A resumable job over many documents; the same command again finishes an interrupted one."""
    import time

    from utils.jobs.engine import create_job, fingerprint, prepare, run_job
    from utils.jobs.inputs import Source, expand_paths
    from utils.jobs.outputs import parse_formats, write_outputs
    from utils.store import JobDocument

    settings = cached_settings()
    models = [m.strip() for m in args.model.split(",") if m.strip()]
    for model in models:
        if model not in settings.models:
            raise UsageError(f"unknown model '{model}'; known: {', '.join(settings.models)}")
    if len(models) == 1:
        settings = settings_with_backend(settings, args, models[0])
    elif args.backend or args.base_url or args.concurrency:
        raise UsageError("--backend, --base-url and --concurrency apply to one model at a time")
    for model in models:
        if args.task not in settings.models[model].tasks:
            raise UsageError(f"{model} does not do '{args.task}'; it supports: "
                             f"{', '.join(settings.models[model].tasks)}")
    if args.workers is not None and args.workers < 1:
        raise UsageError("--workers must be at least 1")
    try:
        formats = parse_formats(args.format)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    store = _open_store(settings, args.db)
    sources, notes = expand_paths(args.inputs, int(settings.documents.max_file_mb * 2**20))
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    if not sources:
        raise UsageError("no documents to read in the inputs given")
    documents = prepare(sources, settings, args.pages)
    for document in documents:
        if document.error:
            print(f"error: {document.error}", file=sys.stderr)
    job = None if args.new_job else store.jobs.find(fingerprint(documents, models, args.task, RunOptions(),
                                                                args.pages))
    if job is not None and job.active:
        raise UsageError(f"job {job.id} is being run right now by {job.owner}; wait for it or stop it first")
    if job is None:
        job_id = create_job(store, documents, models, args.task, RunOptions(), args.pages)
    else:
        job_id = job.id
        counts = store.jobs.counts(job_id)
        print(f"resuming job {job_id}: {counts.finished} of {counts.total} page(s) already finished",
              file=sys.stderr)
    counts = store.jobs.counts(job_id)
    report = _BatchProgress(counts.total, counts.finished)
    started = time.monotonic()
    try:
        final = run_job(store, job_id, settings, workers=args.workers, on_progress=report.update)
    finally:
        report.close()
    seconds = time.monotonic() - started
    counts = store.jobs.counts(job_id)

    def from_path(entry: JobDocument):
        if entry.path is None:
            return None
        return open_document(entry.name, Source(entry.name, entry.path, entry.member).read(), settings.documents)

    pdf_notes: list[str] = []
    written = write_outputs(store, job_id, args.out, formats, from_path, pdf_notes)
    for note in pdf_notes:
        print(f"error: {note}", file=sys.stderr)
    rate = f", {report.run_finished / seconds:.2f} pages/s" if report.run_finished and seconds > 0 else ""
    print(f"job {job_id} {final.status}: {counts.done} page(s) done, {counts.errors} failed, {counts.pending} left "
          f"({report.run_finished} in this run, {seconds:.1f} s{rate}); wrote {len(written)} file(s) to {args.out}",
          file=sys.stderr)
    if final.error:
        print(f"error: {final.error}", file=sys.stderr)
    failed = final.status != "done" or counts.errors or pdf_notes or any(d.error for d in documents)
    return 1 if failed else 0


class _BatchProgress:
    """A progress bar on a terminal; plain lines (one per page) when stderr is not one."""

    def __init__(self, total: int, finished: int):
        self.run_finished = 0
        self._bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=finished, unit="page", file=sys.stderr, dynamic_ncols=True)

    def update(self, progress) -> None:
        self.run_finished = progress.run_finished
        last = progress.last
        state = f"error: {last.error}" if last.error else f"{last.chars} chars"
        if self._bar is not None:
            self._bar.set_postfix_str(f"{Path(last.name).name} p{last.page + 1}", refresh=False)
            self._bar.update(1)
            if last.error:
                self._bar.write(f"{last.name} page {last.page + 1} ({last.model}): {last.error}")
            return
        rate = progress.pages_per_second
        eta = progress.eta_seconds
        speed = f", {rate:.2f} pages/s, ETA {eta:.0f} s" if rate and eta is not None else ""
        print(f"batch {progress.finished}/{progress.total}{speed}: {last.name} page {last.page + 1} "
              f"({last.model}) {state}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def cmd_history(args: argparse.Namespace) -> int:
    settings = cached_settings()
    store = _open_store(settings, args.db)
    if args.limit < 1:
        raise UsageError("--limit must be at least 1")
    rows = store.results(document=args.document, model=args.model_filter, task=args.task, search=args.search,
                         limit=args.limit)
    if args.json:
        out = []
        for row in rows:
            stored = store.get(row.id)
            if stored is None:  # deleted meanwhile
                continue
            out.append({"id": row.id, "created_at": row.created_at.isoformat(), "document": row.document_name,
                        "digest": row.key.digest, "page": row.key.page + 1, "model": row.key.model,
                        "task": row.key.task, "variant": row.key.variant, "profile": row.profile,
                        "device": row.device, "seconds": row.seconds, "chars": row.chars, "job": row.job_id,
                        "text": stored.result.text, "warnings": stored.result.warnings})
        json.dump(out, sys.stdout, ensure_ascii=False, indent=2)
        print()
        return 0
    if not rows:
        print("no stored results match", file=sys.stderr)
        return 0
    print(f"{'id':>6}  {'time':<16}  {'page':>4}  {'model':<12} {'task':<8} {'chars':>6} {'s':>6}  document")
    for row in rows:
        when = row.created_at.astimezone().strftime("%Y-%m-%d %H:%M")
        seconds = f"{row.seconds:.2f}" if row.seconds is not None else ""
        print(f"{row.id:>6}  {when:<16}  {row.key.page + 1:>4}  {row.key.model:<12} {row.key.task:<8} "
              f"{row.chars:>6} {seconds:>6}  {row.document_name}")
    total = store.count(document=args.document, model=args.model_filter, task=args.task, search=args.search)
    if total > len(rows):
        print(f"({len(rows)} newest of {total}; --limit shows more)", file=sys.stderr)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from utils.api.serve import ServeError, serve

    try:
        return serve(args.host, args.port, cached_settings())
    except ServeError as exc:
        raise UsageError(str(exc)) from None


def add_backend_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", choices=("local", "openai"),
                        help="run the model here (local) or on an OpenAI-compatible server such as vLLM (openai)")
    parser.add_argument("--base-url", help="the server's /v1 URL, e.g. http://gpu1:8000/v1 (comma-separated: replicas)")
    parser.add_argument("--concurrency", type=int, help="requests in flight to the server at once")


def cmd_extract(args: argparse.Namespace) -> int:
    """A template's fields from each document: JSON (one object per document) or CSV (one row each)."""
    from utils.documents.reader import parse_page_selection
    from utils.extraction.extract import extract_document
    from utils.extraction.result import Extraction, to_csv
    from utils.extraction.templates import TemplateError, resolve_template

    settings = settings_with_model_path(cached_settings(), args.model, args.model_path)
    try:
        template = resolve_template(args.template, known_models=settings.models)
    except TemplateError as exc:
        raise UsageError(f"template: {exc}") from None
    loader = Loader(settings)
    extractions = []
    try:
        for file in args.files:
            name = Path(file).name
            try:
                document = open_path(file, settings.documents)
                pages = parse_page_selection(args.pages, document.page_count)

                def progress(done: int, total: int, index: int, name: str = name) -> None:
                    print(f"{name}: page {index + 1} ({done + 1} of {total}) with {args.model}…", file=sys.stderr)

                extraction = extract_document(loader, document, template, args.model, pages, on_page=progress)
            except (DocumentError, ValueError) as exc:
                extraction = Extraction(file=name, template=template.name, model=args.model, fields={},
                                        error=one_line(exc))
            except Exception as exc:  # every failure is reported per document; the others still run
                extraction = Extraction(file=name, template=template.name, model=args.model, fields={},
                                        error=f"{name}: {one_line(exc)}")
            extractions.append(extraction)
            for line in ([extraction.error] if extraction.error else extraction.problems):
                print(f"{name}: {line}" if not line.startswith(name) else line, file=sys.stderr)
    finally:
        loader.close()
    if args.format == "csv":
        sys.stdout.write(to_csv(template, extractions))
    else:
        json.dump({"template": template.name, "model": args.model,
                   "documents": [e.to_json() for e in extractions]}, sys.stdout, ensure_ascii=False, indent=2)
        print()
    return 1 if any(e.error or e.problems for e in extractions) else 0


def cmd_chat(args: argparse.Namespace) -> int:
    """One conversation about a document: each -q is a turn, its answer printed as it streams."""
    from utils.chat import CannotChat, ask, failed_turn, seen_line, start_chat

    settings = settings_with_model_path(cached_settings(), args.model, args.model_path)
    settings = settings_with_backend(settings, args, args.model)
    if any(not q.strip() for q in args.question):
        raise UsageError("-q: a question cannot be empty")
    try:
        document = open_path(args.file, settings.documents)
        selection = document.select(args.pages)
    except DocumentError as exc:
        raise UsageError(one_line(exc)) from None
    store = _open_store(settings, args.db)
    loader = Loader(settings)
    try:
        try:
            chat, notes = start_chat(loader, document, selection.indices, args.model, store)
        except CannotChat as exc:
            raise UsageError(str(exc)) from None
        for note in [*selection.warnings, *notes, seen_line(chat)]:
            print(note, file=sys.stderr)
        for question in args.question:
            print(f"> {question}", flush=True)
            try:
                ask(loader, document, chat, question, lambda piece: print(piece, end="", flush=True), store)
            except Exception as exc:  # the model failed on this turn: one line, and the turns so far are kept
                print(f"\ncli.py: error: {failed_turn(args.model, exc)}", file=sys.stderr)
                return 1
            print(flush=True)
        print(f"chat {chat.id} kept in {store.path}", file=sys.stderr)
    finally:
        loader.close()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cli.py", description="Document OCR with classic engines and VLMs.")
    sub = parser.add_subparsers(dest="command", required=True)

    models = sub.add_parser("models", help="list models with their availability")
    models.set_defaults(func=cmd_models)

    ocr = sub.add_parser("ocr", help="recognise documents (images or PDFs)")
    ocr.add_argument("files", nargs="+", metavar="FILE")
    ocr.add_argument("--model", help="model name (default: the first available of config default_models)")
    ocr.add_argument("--task", default="text", choices=TASKS)
    ocr.add_argument("--pages", help='pages to read, like "1-3,7" (default: all)')
    ocr.add_argument("--format", default="txt", choices=("json", "txt", "md", "pdf"),
                     help="pdf: a searchable PDF per document (needs --out)")
    ocr.add_argument("--out", help="write one file per document into this folder")
    ocr.add_argument("--model-path", help="load the model from this local snapshot folder")
    ocr.add_argument("--languages", help='Tesseract languages for these documents, e.g. "eng" or "rus+eng" '
                                         "(default: chosen per page)")
    add_backend_arguments(ocr)
    ocr.set_defaults(func=cmd_ocr)

    evaluate = sub.add_parser("eval", help="accuracy against ground truth: DIR holds documents and same-stem .txt "
                                           "(pages split by form feed) and optional .keys files")
    evaluate.add_argument("dir", metavar="DIR")
    evaluate.add_argument("--models", help="comma-separated model names (default: config default_models)")
    evaluate.add_argument("--task", default="text", choices=TASKS)
    evaluate.add_argument("--json", action="store_true", help="one JSON object with per-document and aggregate figures")
    evaluate.set_defaults(func=cmd_eval)

    bench = sub.add_parser("bench", help="speed and memory through the app and through the raw engines")
    bench.add_argument("dir", metavar="DIR")
    bench.add_argument("--models", help="comma-separated model names (default: config default_models)")
    bench.add_argument("--out", default="bench_out", help="folder for bench.csv, bench_pages.csv, bench.png")
    bench.add_argument("--limit", type=int, help="at most this many pages, in file-name order")
    bench.set_defaults(func=cmd_bench)

    reparse = sub.add_parser("reparse", help="parse a saved raw VLM output again (after a parser fix), as for a "
                                             "page of the given size")
    reparse.add_argument("--model", required=True, help="the VLM that wrote the output")
    reparse.add_argument("--task", required=True, choices=TASKS)
    reparse.add_argument("--raw", required=True, metavar="FILE", help="the raw output (a page's \"raw\" field)")
    reparse.add_argument("--page-size", required=True, nargs=2, type=int, metavar=("W", "H"),
                         help="the page's size in pixels")
    reparse.add_argument("--max-pixels", type=int, help="the pixel budget the page ran with, if the guard lowered it")
    reparse.add_argument("--format", default="json", choices=("json", "txt", "md"))
    reparse.set_defaults(func=cmd_reparse)

    batch = sub.add_parser("batch", help="a resumable job over many documents (files, folders, zips); run the "
                                         "same command again to finish an interrupted one")
    batch.add_argument("inputs", nargs="+", metavar="INPUT", help="images, PDFs, folders or zips")
    batch.add_argument("--model", help="model name, or several separated by commas (default: the first available)")
    batch.add_argument("--task", default="text", choices=TASKS)
    batch.add_argument("--pages", help='pages of each document, like "1-3,7" (default: all)')
    batch.add_argument("--out", required=True, help="folder for the per-page files, combined markdown and summary.csv")
    batch.add_argument("--format", default="txt,md,json",
                       help="comma-separated: txt, md, json (one file per page), pdf (a searchable PDF per document)")
    batch.add_argument("--workers", type=int, help="worker processes for classic engines (default: the number of "
                                                   "cores); a model with weights always uses one")
    batch.add_argument("--db", help="results database (default: store.path in config.yaml)")
    batch.add_argument("--new-job", action="store_true", help="start afresh even if the same job exists")
    add_backend_arguments(batch)
    batch.set_defaults(func=cmd_batch)

    history = sub.add_parser("history", help="stored results, newest first")
    history.add_argument("--json", action="store_true", help="one JSON list, each result with its text")
    history.add_argument("--document", help="only this document (its name as stored)")
    history.add_argument("--model", dest="model_filter", metavar="MODEL", help="only this model")
    history.add_argument("--task", choices=TASKS, help="only this task")
    history.add_argument("--search", help="only results whose text contains these words")
    history.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    history.add_argument("--db", help="results database (default: store.path in config.yaml)")
    history.set_defaults(func=cmd_history)

    serve = sub.add_parser("serve", help="the HTTP API (OpenAPI docs at /docs); off 127.0.0.1 it needs OCR_API_KEY")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    serve.set_defaults(func=cmd_serve)

    extract = sub.add_parser("extract", help="fields of a document template (invoice, receipt, passport, ...) as data")
    extract.add_argument("files", nargs="+", metavar="FILE")
    extract.add_argument("--template", required=True,
                         help="template name (invoice, receipt, passport, driver_licence) or a template .yaml file")
    extract.add_argument("--model", help="model name (default: the first available of config default_models)")
    extract.add_argument("--pages", help='pages to read, like "1-3,7" (default: all)')
    extract.add_argument("--format", default="json", choices=("json", "csv"))
    extract.add_argument("--model-path", help="load the model from this local snapshot folder")
    extract.set_defaults(func=cmd_extract)
    chat = sub.add_parser("chat", help="ask a VLM questions about a document (one conversation)")
    chat.add_argument("file", metavar="FILE")
    chat.add_argument("--model", required=True, help="a model that can chat (see `cli.py models`)")
    chat.add_argument("--pages", help='pages to talk about, like "1-3" (default: all)')
    chat.add_argument("-q", "--question", action="append", required=True,
                      help="a question; repeat for follow-ups in the same conversation")
    chat.add_argument("--model-path", help="load the model from this local snapshot folder")
    chat.add_argument("--db", help="results store file (default: store.path from config)")
    add_backend_arguments(chat)
    chat.set_defaults(func=cmd_chat)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if getattr(args, "model", "") is None:
            args.model = _default_model()
        return args.func(args)
    except UsageError as exc:
        print(f"cli.py: error: {exc}", file=sys.stderr)
        return 2
    except ConfigError as exc:
        print(f"cli.py: config error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _default_model() -> str:
    loader = Loader(cached_settings())
    try:
        model = loader.default_model()
    finally:
        loader.close()
    if model is None:
        raise UsageError("no model is available; run `python cli.py models` to see why")
    return model


if __name__ == "__main__":
    sys.exit(main())
