"""Speed and memory of models through the app's loader, beside the raw engines they wrap.

For each model, every page of the folder's documents (or the first --limit pages) goes through
`run_pages`, the page runner the app uses. For the classic engines the same pages also go
through the raw engine:
- tesseract: the `tesseract IMG - -l LANGS --psm N` command, one process per page (so its load
  time is paid on every page, as it is for any script that shells out to it);
- rapidocr: a `RapidOCR` object created and called in this process, with the adapter's settings.

For the raw engines, pages are rendered once per run into temporary PNG files, outside the timed
region; the app renders the same pages itself (rendering is deterministic, so both see the same
pixels). Latency is the wall time of one recognition call (rendering excluded) minus the model's
load time. A page that cannot be rendered is reported on its own; the other pages still run.
Memory is the resident set size (RSS) of this process and all its children (an inference
worker, a tesseract process), summed and sampled every 20 ms in a thread: "peak" is the highest
sample during the run, "added" is that peak minus the sample taken just before it. Shared pages
are counted once per process, so the sum can overstate the truth a little.
"""
from __future__ import annotations

import csv
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import groupby
from pathlib import Path

import numpy as np
import psutil
from PIL import Image

from utils.config import DocumentLimits, Settings
from utils.documents.reader import EXTENSIONS, DocumentError, open_path
from utils.engine.loader import Loader
from utils.engine.runner import run_pages
from utils.messages import one_line

MB = 1024 * 1024


def tree_rss(process: psutil.Process | None = None) -> int:
    """Bytes resident in the process and all its descendants."""
    process = process or psutil.Process(os.getpid())
    total = 0
    for member in [process, *process.children(recursive=True)]:
        try:
            total += member.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue  # a child that exits between listing and reading
    return total


class MemorySampler:
    """Peak RSS of the process tree (and VRAM when a reader is given) while the block runs."""

    def __init__(self, interval: float = 0.02, vram_reader: Callable[[], float | None] | None = None,
                 vram_interval: float = 0.5):
        self.interval = interval
        self.vram_reader = vram_reader
        self.vram_every = max(1, round(vram_interval / interval))  # NVML readings cost more than RSS ones
        self.baseline = 0
        self.peak = 0
        self.peak_vram_mb: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self, tick: int = 0) -> None:
        self.peak = max(self.peak, tree_rss())
        if self.vram_reader is not None and tick % self.vram_every == 0:
            used = self.vram_reader()
            if used is not None:
                self.peak_vram_mb = max(self.peak_vram_mb or 0.0, used)

    def _loop(self) -> None:
        tick = 0
        while not self._stop.wait(self.interval):
            self._sample(tick)
            tick += 1

    def __enter__(self) -> MemorySampler:
        self.baseline = tree_rss()
        self.peak = self.baseline
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample()

    @property
    def peak_mb(self) -> float:
        return self.peak / MB

    @property
    def added_mb(self) -> float:
        return (self.peak - self.baseline) / MB


def used_vram_mb() -> float | None:
    """Memory used on all NVIDIA GPUs, from NVML via utils/engine/gpu.py (every process's, not only ours)."""
    from utils.engine import gpu

    used = [r.memory_used_mb for r in gpu.readings() if r.memory_used_mb is not None]
    return sum(used) if used else None


def gpu_memory_reader() -> Callable[[], float | None] | None:
    """used_vram_mb when a GPU can be read here, else None (no VRAM column figures)."""
    return used_vram_mb if used_vram_mb() is not None else None


@dataclass(frozen=True)
class PageRef:
    document: str
    index: int  # 0-based
    png: Path
    source: Path  # the document file the page belongs to


@dataclass
class BenchRow:
    model: str
    engine: str  # "app" or "raw:<what>"
    latencies: list[float] = field(default_factory=list)
    timed_pages: list[PageRef] = field(default_factory=list)  # the page of each latency
    page_errors: list[str] = field(default_factory=list)
    load_seconds: float | None = None
    first_call_seconds: float | None = None  # wall time of the first page, load and start-up included
    peak_rss_mb: float | None = None
    added_rss_mb: float | None = None
    peak_vram_mb: float | None = None
    error: str | None = None

    @property
    def pages(self) -> int:
        return len(self.latencies)

    @property
    def p50(self) -> float | None:
        return float(np.percentile(self.latencies, 50)) if self.latencies else None

    @property
    def p95(self) -> float | None:
        return float(np.percentile(self.latencies, 95)) if self.latencies else None

    @property
    def pages_per_second(self) -> float | None:
        total = sum(self.latencies)
        return len(self.latencies) / total if total > 0 else None

    def record(self) -> dict:
        return {"model": self.model, "engine": self.engine, "pages": self.pages, "load_s": self.load_seconds,
                "first_call_s": self.first_call_seconds,
                "p50_s": self.p50, "p95_s": self.p95, "pages_per_s": self.pages_per_second,
                "peak_rss_mb": self.peak_rss_mb, "added_rss_mb": self.added_rss_mb,
                "peak_vram_mb": self.peak_vram_mb, "error": self.error or "; ".join(self.page_errors) or None}


def render_pages(folder: Path, target: Path, limit: int | None = None, limits: DocumentLimits | None = None,
                 errors: list[str] | None = None) -> list[PageRef]:
    """Every page of the folder's documents as a PNG in target, in name order.

    A document that cannot be opened, or a page that cannot be rendered, goes to errors; the other
    pages are still rendered.
    """
    refs: list[PageRef] = []
    for path in sorted(Path(folder).iterdir()):
        if not (path.is_file() and path.suffix.lower() in EXTENSIONS):
            continue
        try:
            document = open_path(path, limits)
        except DocumentError as exc:
            if errors is not None:
                errors.append(str(exc))
            continue
        for index in range(document.page_count):
            if limit is not None and len(refs) >= limit:
                return refs
            png = target / f"{len(refs):04d}_{path.stem}_p{index + 1}.png"
            try:
                document.render(index).image.save(png)
            except DocumentError as exc:
                if errors is not None:
                    errors.append(str(exc))
                continue
            refs.append(PageRef(path.name, index, png, path))
    return refs


def bench_app(loader: Loader, model: str, pages: list[PageRef], task: str = "text",
              vram_reader: Callable[[], float | None] | None = None,
              limits: DocumentLimits | None = None) -> BenchRow:
    """The pages through run_pages, document by document, as the app runs them."""
    row = BenchRow(model, "app")
    try:
        with MemorySampler(vram_reader=vram_reader) as memory:
            for source, group in groupby(pages, key=lambda ref: ref.source):
                refs = {ref.index: ref for ref in group}
                document = open_path(source, limits)
                for outcome in run_pages(loader, document, list(refs), model, task):
                    result = outcome.result
                    if result is None:
                        row.page_errors.append(outcome.error or f"page {outcome.page + 1} failed")
                        continue
                    wall = outcome.wall_seconds or 0.0
                    if row.first_call_seconds is None:
                        row.first_call_seconds = wall
                    if result.load_seconds is not None:
                        row.load_seconds = (row.load_seconds or 0.0) + result.load_seconds
                    row.latencies.append(wall - (result.load_seconds or 0.0))
                    row.timed_pages.append(refs[outcome.page])
    except Exception as exc:  # one model failing must not end the benchmark of the others
        row.error = f"{type(exc).__name__}: {one_line(exc)}"
    row.peak_rss_mb, row.added_rss_mb, row.peak_vram_mb = memory.peak_mb, memory.added_mb, memory.peak_vram_mb
    return row


def bench_raw_tesseract(model: str, options: dict, pages: list[PageRef]) -> BenchRow:
    row = BenchRow(model, "raw:tesseract-cli")
    binary = shutil.which("tesseract")
    if binary is None:
        row.error = "the tesseract command is not installed"
        return row
    command = [binary, "", "-", "-l", options.get("languages", "rus+eng"), "--psm", str(options.get("psm", 3))]
    with MemorySampler() as memory:
        for ref in pages:
            command[1] = str(ref.png)
            started = time.perf_counter()
            done = subprocess.run(command, capture_output=True)
            row.latencies.append(time.perf_counter() - started)
            row.timed_pages.append(ref)
            row.first_call_seconds = row.first_call_seconds or row.latencies[0]
            if done.returncode != 0:
                row.error = f"tesseract exited {done.returncode}: {done.stderr.decode(errors='replace').strip()[:200]}"
                break
    row.peak_rss_mb, row.added_rss_mb = memory.peak_mb, memory.added_mb
    return row


def bench_raw_rapidocr(model: str, options: dict, pages: list[PageRef]) -> BenchRow:
    row = BenchRow(model, "raw:rapidocr")
    with MemorySampler() as memory:
        started = time.perf_counter()
        from rapidocr import RapidOCR

        engine = RapidOCR(params={"Global.text_score": options.get("text_score", 0.5),
                                  "Global.use_cls": options.get("use_angle_cls", False),
                                  "Global.log_level": "error"})
        row.load_seconds = time.perf_counter() - started
        for ref in pages:
            with Image.open(ref.png) as img:
                bgr = np.asarray(img.convert("RGB"))[:, :, ::-1]
            started = time.perf_counter()
            engine(bgr)
            row.latencies.append(time.perf_counter() - started)
            row.timed_pages.append(ref)
            if row.first_call_seconds is None:
                row.first_call_seconds = row.load_seconds + row.latencies[0]
        del engine
    row.peak_rss_mb, row.added_rss_mb = memory.peak_mb, memory.added_mb
    return row


RAW_ENGINES: dict[str, Callable[[str, dict, list[PageRef]], BenchRow]] = {
    "tesseract_ocr": bench_raw_tesseract,
    "rapidocr_ocr": bench_raw_rapidocr,
}


@dataclass
class BenchReport:
    rows: list[BenchRow]
    pages: list[PageRef]
    document_errors: list[str]

    def pairs(self) -> Iterator[tuple[BenchRow, BenchRow]]:
        """(app, raw) rows of each model that has both."""
        for app in self.rows:
            if app.engine != "app":
                continue
            for raw in self.rows:
                if raw.model == app.model and raw.engine.startswith("raw"):
                    yield app, raw


def run_benchmark(folder: Path, models: list[str], settings: Settings, work_dir: Path, limit: int | None = None,
                  task: str = "text", raw: bool = True,
                  on_progress: Callable[[str], None] | None = None) -> BenchReport:
    """Each model through a fresh Loader (so its load time is measured), then its raw engine."""
    errors: list[str] = []
    pages = render_pages(folder, work_dir, limit, settings.documents, errors)
    vram_reader = gpu_memory_reader()
    rows: list[BenchRow] = []
    for model in models:
        if on_progress:
            on_progress(f"{model}: {len(pages)} page(s) through the app")
        loader = Loader(settings)
        try:
            rows.append(bench_app(loader, model, pages, task, vram_reader, settings.documents))
        finally:
            loader.close()
        raw_engine = RAW_ENGINES.get(settings.model(model).adapter)
        if raw and raw_engine is not None:
            if on_progress:
                on_progress(f"{model}: {len(pages)} page(s) through the raw engine")
            rows.append(raw_engine(model, settings.model(model).options, pages))
    return BenchReport(rows, pages, errors)


def ratios(app: BenchRow, raw: BenchRow) -> dict[str, float | None]:
    """app / raw for latency, throughput and added memory (latency > 1: the app is slower)."""
    def divide(a: float | None, b: float | None) -> float | None:
        return a / b if a is not None and b else None

    return {"p50": divide(app.p50, raw.p50), "p95": divide(app.p95, raw.p95),
            "pages_per_s": divide(app.pages_per_second, raw.pages_per_second),
            "peak_rss": divide(app.peak_rss_mb, raw.peak_rss_mb),
            "added_rss": divide(app.added_rss_mb, raw.added_rss_mb)}


CSV_FIELDS = ("model", "engine", "pages", "load_s", "first_call_s", "p50_s", "p95_s", "pages_per_s", "peak_rss_mb",
              "added_rss_mb", "peak_vram_mb", "error")


def write_csv(report: BenchReport, path: Path) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for row in report.rows:
            writer.writerow(row.record())


def write_pages_csv(report: BenchReport, path: Path) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(("model", "engine", "document", "page", "seconds"))
        for row in report.rows:
            for ref, seconds in zip(row.timed_pages, row.latencies):
                writer.writerow((row.model, row.engine, ref.document, ref.index + 1, f"{seconds:.4f}"))


def write_plots(report: BenchReport, path: Path) -> None:
    """Per model, app beside raw: p50/p95 latency, pages per second, peak and added RSS."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [row for row in report.rows if row.latencies]
    labels = [f"{row.model}\n{row.engine}" for row in rows]
    colours = ["tab:blue" if row.engine == "app" else "tab:orange" for row in rows]
    x = np.arange(len(rows))
    figure, axes = plt.subplots(1, 3, figsize=(max(9, 2.2 * len(rows) * 1.5), 4.2))
    axes[0].bar(x - 0.2, [row.p50 for row in rows], 0.4, color=colours, label="p50")
    axes[0].bar(x + 0.2, [row.p95 for row in rows], 0.4, color=colours, alpha=0.5, label="p95")
    axes[0].set_title("seconds per page (p50, p95 lighter)")
    axes[1].bar(x, [row.pages_per_second for row in rows], color=colours)
    axes[1].set_title("pages per second")
    axes[2].bar(x - 0.2, [row.peak_rss_mb for row in rows], 0.4, color=colours)
    axes[2].bar(x + 0.2, [row.added_rss_mb for row in rows], 0.4, color=colours, alpha=0.5)
    axes[2].set_title("RSS MB (peak, added lighter)")
    for axis in axes:
        axis.set_xticks(x, labels, fontsize=8)
        axis.grid(axis="y", alpha=0.3)
    figure.suptitle(f"{len(report.pages)} page(s); blue = through the app, orange = raw engine")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _fmt(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def format_report(report: BenchReport) -> str:
    lines = [f"{len(report.pages)} page(s)"]
    lines += [f"document error: {error}" for error in report.document_errors]
    header = ("model", "engine", "pages", "load s", "first page s", "p50 s", "p95 s", "pages/s", "peak RSS MB",
              "added RSS MB", "peak VRAM MB")
    lines += ["", "| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in report.rows:
        cells = [row.model, row.engine, str(row.pages), _fmt(row.load_seconds), _fmt(row.first_call_seconds),
                 _fmt(row.p50, 3), _fmt(row.p95, 3),
                 _fmt(row.pages_per_second), _fmt(row.peak_rss_mb, 0), _fmt(row.added_rss_mb, 0),
                 _fmt(row.peak_vram_mb, 0)]
        lines.append("| " + " | ".join(cells) + " |")
        if row.error:
            lines.append(f"  error ({row.model} {row.engine}): {row.error}")
        lines += [f"  page error ({row.model} {row.engine}): {error}" for error in row.page_errors]
    pairs = list(report.pairs())
    if pairs:
        ratio_header = ("model", "raw engine", "p50 app/raw", "p95 app/raw", "pages/s app/raw", "peak RSS app/raw",
                        "added RSS app/raw")
        lines += ["", "| " + " | ".join(ratio_header) + " |", "|" + "|".join("---" for _ in ratio_header) + "|"]
        for app, raw in pairs:
            r = ratios(app, raw)
            lines.append("| " + " | ".join([app.model, raw.engine.removeprefix("raw:"), _fmt(r["p50"]),
                                            _fmt(r["p95"]), _fmt(r["pages_per_s"]), _fmt(r["peak_rss"]),
                                            _fmt(r["added_rss"])]) + " |")
    return "\n".join(lines)


def write_outputs(report: BenchReport, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "bench.csv", out / "bench_pages.csv", out / "bench.png"]
    write_csv(report, paths[0])
    write_pages_csv(report, paths[1])
    write_plots(report, paths[2])
    return paths
