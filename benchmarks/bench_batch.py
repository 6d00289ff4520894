"""`cli.py batch` with Tesseract on every core against the fastest plain ways to read the same pages.

    python benchmarks/bench_batch.py [DIR] [--workers N] [--repeat R]

Three ways over the same images, each timed from process start to the last page read (start-up,
loading the language data, writing results included), in one run:
  batch      `cli.py batch DIR --model tesseract --workers N` (a fresh results database each time);
  tesserocr  one Python process, the engine loaded once, one page after another;
  tesseract  the `tesseract IMG - -l LANGS --psm P` command with OMP_THREAD_LIMIT=1, N at a time.
With --repeat the three alternate R times and the median counts, so a busy moment of a shared machine
does not land on one side only. Languages and page segmentation come from config.yaml's tesseract entry.
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from models.tesseract_ocr import find_tessdata  # noqa: E402
from utils.config import cached_settings  # noqa: E402
from utils.documents.reader import EXTENSIONS  # noqa: E402
from utils.jobs.engine import available_cores  # noqa: E402

DEFAULT_DIR = ROOT.parent / "shared" / "data" / "images"

TESSEROCR = """
import sys
import tesserocr
from PIL import Image
tessdata, langs, psm, files = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]
read = 0
with tesserocr.PyTessBaseAPI(path=tessdata + "/", lang=langs, psm=psm, oem=tesserocr.OEM.LSTM_ONLY) as api:
    for file in files:
        with Image.open(file) as image:
            api.SetImage(image)
            read += bool(api.GetUTF8Text().strip())
print(read)
"""


def children_cpu() -> float:
    """CPU seconds of every finished child process so far: a figure a busy machine does not inflate."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_batch(folder: Path, workers: int) -> tuple[float, int]:
    with tempfile.TemporaryDirectory(prefix="bench_batch_") as work:
        started = time.perf_counter()
        done = subprocess.run([sys.executable, str(ROOT / "cli.py"), "batch", str(folder), "--model", "tesseract",
                               "--workers", str(workers), "--out", f"{work}/out", "--db", f"{work}/r.db",
                               "--format", "txt"], capture_output=True, text=True)
        seconds = time.perf_counter() - started
        if done.returncode != 0:
            raise SystemExit(f"cli.py batch failed: {done.stderr.strip().splitlines()[-1]}")
        read = sum(1 for p in Path(work, "out").rglob("*.txt") if p.read_text(encoding="utf-8").strip())
    return seconds, read


def run_tesserocr(files: list[Path], tessdata: str, langs: str, psm: int) -> tuple[float, int]:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", TESSEROCR, tessdata, langs, str(psm), *map(str, files)],
                          capture_output=True, text=True, check=True)
    return time.perf_counter() - started, int(done.stdout.strip())


def run_tesseract_cli(files: list[Path], langs: str, psm: int, parallel: int) -> tuple[float, int]:
    env = dict(os.environ, OMP_THREAD_LIMIT="1")

    def one(file: Path) -> bool:
        done = subprocess.run(["tesseract", str(file), "-", "-l", langs, "--psm", str(psm)], capture_output=True,
                              text=True, env=env, check=True)
        return bool(done.stdout.strip())

    started = time.perf_counter()
    with ThreadPoolExecutor(parallel) as pool:
        read = sum(pool.map(one, files))
    return time.perf_counter() - started, read


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir", nargs="?", default=str(DEFAULT_DIR))
    parser.add_argument("--workers", type=int, default=available_cores(), help="default: the cores available")
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    folder = Path(args.dir)
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in EXTENSIONS and p.suffix.lower() != ".pdf")
    if not files:
        raise SystemExit(f"{folder}: no images")
    options = cached_settings().model("tesseract").options
    langs, psm = options["languages"], options["psm"]
    tessdata = find_tessdata(options.get("tessdata_dir"))
    if tessdata is None:
        raise SystemExit("no Tesseract language data found")

    ways = {"tesserocr": lambda: run_tesserocr(files, str(tessdata), langs, psm),
            "tesseract": lambda: run_tesseract_cli(files, langs, psm, args.workers),
            "batch": lambda: run_batch(folder, args.workers)}
    runs: dict[str, list[tuple[float, int]]] = {name: [] for name in ways}
    cpu: dict[str, list[float]] = {name: [] for name in ways}
    for round_number in range(1, args.repeat + 1):
        for name, way in ways.items():
            before = children_cpu()
            runs[name].append(way())
            cpu[name].append(children_cpu() - before)
        print(f"round {round_number}: " + ", ".join(f"{name} {values[-1][0]:.1f} s" for name, values in runs.items()),
              file=sys.stderr)

    labels = {
        "tesserocr": "tesserocr, one process, one page after another",
        "tesseract": f"`OMP_THREAD_LIMIT=1 tesseract`, {args.workers} at a time",
        "batch": f"`cli.py batch --workers {args.workers}`",
    }
    median = {name: statistics.median(s for s, _ in values) for name, values in runs.items()}
    print(f"{len(files)} pages from {folder}, Tesseract {langs} psm {psm}, {available_cores()} cores, "
          f"median of {args.repeat}, {datetime.now(UTC):%Y-%m-%d}")
    print()
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    print()
    print("| way | seconds (start-up included) | pages/s | batch is faster by | CPU seconds | pages read |")
    print("|---|---|---|---|---|---|")
    for name, values in runs.items():
        seconds = median[name]
        faster = "—" if name == "batch" else f"{seconds / median['batch']:.2f}×"
        print(f"| {labels[name]} | {seconds:.1f} | {len(files) / seconds:.2f} | {faster} | "
              f"{statistics.median(cpu[name]):.1f} | {values[-1][1]}/{len(files)} |")


if __name__ == "__main__":
    main()
