"""Command line: the same loader as the UI.

  python cli.py models
  python cli.py ocr FILE... --model NAME [--task text|markdown|layout] [--pages 1-3]
                           [--format json|txt|md] [--out DIR] [--model-path DIR]
  python cli.py eval DIR [--models a,b] [--task text] [--json]
  python cli.py bench DIR [--models a,b] [--out bench_out] [--limit N]
  python cli.py extract FILE... --template NAME|FILE.yaml [--model NAME] [--pages 1-3] [--format json|csv]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from models.contract import TASKS
from utils.config import ConfigError, Settings, cached_settings
from utils.documents.export import document_text
from utils.documents.reader import DocumentError, open_path
from utils.engine.loader import Loader
from utils.messages import one_line

# Fields of each page in `ocr --format json`, in this order.
PAGE_FIELDS = ("page", "model", "task", "text", "markdown", "blocks", "device", "dtype", "profile",
               "seconds", "load_seconds", "tokens", "truncated", "warnings")


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


def _page_json(result) -> dict:
    data = result.model_dump(mode="json")
    data["page"] = (result.page or 0) + 1
    return {key: data[key] for key in PAGE_FIELDS}


def cmd_ocr(args: argparse.Namespace) -> int:
    settings = settings_with_model_path(cached_settings(), args.model, args.model_path)
    if args.task not in settings.models[args.model].tasks:
        raise UsageError(f"{args.model} does not do '{args.task}'; it supports: "
                         f"{', '.join(settings.models[args.model].tasks)}")
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
    loader = Loader(settings)
    documents = []
    try:
        for file in args.files:
            entry = {"file": file, "error": None, "pages": []}
            documents.append(entry)
            results = []
            try:
                document = open_path(file, settings.documents)
                for index, image in document.pages(args.pages):
                    print(f"{Path(file).name}: page {index + 1}/{document.page_count} with {args.model}…",
                          file=sys.stderr)
                    result = loader.run(args.model, image, args.task, page=index, source=document.name)
                    result.warnings = document.warnings + result.warnings
                    results.append(result)
            except DocumentError as exc:
                entry["error"] = one_line(exc)
            except Exception as exc:  # every failure is reported per document; the others still run
                entry["error"] = f"{Path(file).name}: {one_line(exc)}"
            if entry["error"]:
                print(f"error: {entry['error']}", file=sys.stderr)
            entry["pages"] = [_page_json(r) for r in results]
            if results and args.out:
                target = Path(args.out) / f"{Path(file).stem}.{args.format}"
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
    return 1 if any(d["error"] for d in documents) else 0


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
        state = f"error: {doc.error}" if doc.error else f"CER {doc.cer:.1%}, {len(doc.pages)} page(s)"
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
    failed = any(m.error or any(d.error for d in m.documents) for m in report.models)
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
    return 1 if any(row.error for row in report.rows) or report.document_errors else 0


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
    ocr.add_argument("--format", default="txt", choices=("json", "txt", "md"))
    ocr.add_argument("--out", help="write one file per document into this folder")
    ocr.add_argument("--model-path", help="load the model from this local snapshot folder")
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

    extract = sub.add_parser("extract", help="fields of a document template (invoice, receipt, passport, ...) as data")
    extract.add_argument("files", nargs="+", metavar="FILE")
    extract.add_argument("--template", required=True,
                         help="template name (invoice, receipt, passport, driver_licence) or a template .yaml file")
    extract.add_argument("--model", help="model name (default: the first available of config default_models)")
    extract.add_argument("--pages", help='pages to read, like "1-3,7" (default: all)')
    extract.add_argument("--format", default="json", choices=("json", "csv"))
    extract.add_argument("--model-path", help="load the model from this local snapshot folder")
    extract.set_defaults(func=cmd_extract)
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
