"""One command for a machine with a CUDA GPU: the VLMs on real pages, and real GPU faults through the guard.

    python benchmarks/gpu_check.py [--models qwen_vl_2b,qwen3_vl_2b,dots_ocr] [--data DIR] [--limit N]
                                   [--task text] [--no-faults]

For each model whose weights are present: every page of the documents in DIR that have a same-stem
.txt ground truth (pages split by form feeds), up to --limit pages, through the Loader and run_pages
like the app; it prints CER (summed edit distance over summed reference length), seconds per page,
tokens per second and the peak GPU memory in use (NVML, every process on the card). Then a real
device-side assert and a real out-of-memory error, raised on the GPU inside the worker
(models/vlm/gpu_faults.py), and what the guard did about each. Without a usable CUDA GPU it says so
and exits 0; it exits 1 when a model failed a page or a fault was not recovered.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from PIL import Image  # noqa: E402

from models.registry import ModelSpec  # noqa: E402
from utils.config import Settings, cached_settings  # noqa: E402
from utils.documents.reader import DocumentError, open_path  # noqa: E402
from utils.engine.loader import Loader  # noqa: E402
from utils.engine.runner import run_pages  # noqa: E402
from utils.messages import one_line  # noqa: E402
from utils.quality import metrics  # noqa: E402
from utils.quality.benchmark import MemorySampler, gpu_memory_reader  # noqa: E402
from utils.quality.evaluation import find_items  # noqa: E402
from utils.quality.scoring import reference_parts  # noqa: E402

VLMS = ("qwen_vl_2b", "qwen3_vl_2b", "dots_ocr")
DEFAULT_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "images"
FAULTS = {"gpu_fault_device_assert": "device_assert", "gpu_fault_oom": "oom"}


@dataclass
class ModelRow:
    model: str
    pages: int = 0
    char_errors: int = 0
    reference_chars: int = 0
    seconds: float = 0.0
    tokens: int = 0
    load_seconds: float | None = None
    peak_vram_mb: float | None = None
    errors: list[str] = field(default_factory=list)

    @property
    def cer(self) -> float | None:
        return self.char_errors / self.reference_chars if self.reference_chars else None

    def line(self) -> str:
        cer = f"{self.cer:.1%}" if self.cer is not None else "—"
        per_page = f"{self.seconds / self.pages:.2f}" if self.pages else "—"
        rate = f"{self.tokens / self.seconds:.1f}" if self.seconds and self.tokens else "—"
        vram = f"{self.peak_vram_mb:.0f}" if self.peak_vram_mb is not None else "—"
        load = f"{self.load_seconds:.1f}" if self.load_seconds is not None else "—"
        return (f"| {self.model} | {self.pages} | {cer} | {per_page} | {rate} | {vram} | {load} | "
                f"{len(self.errors)} |")


def measure(loader: Loader, model: str, data: Path, limit: int, task: str = "text") -> ModelRow:
    """The model over the pages of data that have ground truth, at most `limit` pages, scored."""
    row = ModelRow(model)
    with MemorySampler(vram_reader=gpu_memory_reader()) as memory:
        for item in find_items(data):
            if item.truth is None or row.pages + len(row.errors) >= limit:
                continue
            try:
                document = open_path(item.document, loader.settings.documents)
                truths = reference_parts(item.truth.read_text(encoding="utf-8"))
            except (DocumentError, OSError, UnicodeDecodeError) as exc:
                row.errors.append(f"{item.document.name}: {one_line(exc)}")
                continue
            count = min(document.page_count, len(truths), limit - row.pages - len(row.errors))
            for outcome in run_pages(loader, document, range(count), model, task):
                if outcome.result is None:
                    row.errors.append(f"{item.document.name} {outcome.error}")
                    continue
                result = outcome.result
                text = result.text or result.markdown
                row.pages += 1
                row.char_errors += metrics.char_distance(text, truths[outcome.page])
                row.reference_chars += len(metrics.normalize(truths[outcome.page]))
                row.seconds += result.seconds
                row.tokens += result.tokens or 0
                if result.load_seconds is not None:
                    row.load_seconds = (row.load_seconds or 0.0) + result.load_seconds
    row.peak_vram_mb = memory.peak_vram_mb
    return row


def with_fault_models(settings: Settings, marker: Path) -> Settings:
    settings = settings.model_copy(deep=True)
    for name, fault in FAULTS.items():
        options = {"fault": fault, "marker": str(marker)} if fault == "device_assert" else {"fault": fault}
        settings.models[name] = ModelSpec(adapter="vlm.gpu_faults", label=f"real GPU fault: {fault}",
                                          tasks=["text"], options=options)
    return settings


def check_faults(loader: Loader) -> bool:
    """Each real fault through the guard; True when every one was recovered and answered."""
    page = Image.new("RGB", (64, 64), "white")
    recovered = True
    for name, fault in FAULTS.items():
        before = len(loader.recovery_events())
        try:
            result = loader.run(name, page, "text")
            outcome = f"answered after recovery: {result.text}"
        except Exception as exc:  # the guard gave up: that is the finding to report
            outcome, recovered = f"NOT recovered: {type(exc).__name__}: {one_line(exc)}", False
        events = loader.recovery_events()[before:]
        if not events:
            outcome, recovered = f"no fault was seen ({outcome})", False
        print(f"{fault}: {outcome}")
        for event in events:
            print(f"    {event.kind}: {event.action} — {event.detail.splitlines()[0] if event.detail else ''}")
    return recovered


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(VLMS), help="comma-separated model names")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="documents with same-stem .txt ground truth")
    parser.add_argument("--limit", type=int, default=10, help="pages per model")
    parser.add_argument("--task", default="text")
    parser.add_argument("--no-faults", action="store_true", help="skip the real device assert and OOM")
    args = parser.parse_args(argv)
    settings = cached_settings()
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in settings.models]
    if unknown or args.limit < 1:
        parser.error(f"unknown models {unknown}" if unknown else "--limit must be at least 1")

    with tempfile.TemporaryDirectory(prefix="gpu_check_") as work:
        loader = Loader(with_fault_models(settings, Path(work) / "device_assert_taken"))
        try:
            loader.wait_for_preflight()  # it runs in the background from the loader's start
            info = loader.system_info()
            if info.preflight is None or not info.preflight.cuda_usable:
                reason = info.preflight.reason if info.preflight else "no preflight result"
                print(f"no usable CUDA GPU here ({reason}): nothing to check")
                return 0
            if not args.data.is_dir():
                parser.error(f"--data {args.data}: not a directory")
            print(f"GPU: {info.preflight.device_name} (compute capability {info.preflight.capability}), "
                  f"torch {info.preflight.torch_version}; profile {info.profile}")
            print("| model | pages | CER | s/page | tokens/s | peak VRAM MB | load s | failed pages |")
            print("|---|---|---|---|---|---|---|---|")
            failed = False
            for model in models:
                status = loader.status(model).availability
                if not status.available:
                    print(f"| {model} | {status.status}: {status.reason} {status.fix or ''} |")
                    continue
                row = measure(loader, model, args.data, args.limit, args.task)
                print(row.line(), flush=True)
                for error in row.errors:
                    print(f"    {error}")
                failed |= bool(row.errors)
            if not args.no_faults:
                failed |= not check_faults(loader)
        finally:
            loader.close()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
