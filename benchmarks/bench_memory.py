"""Peak memory of `cli.py ocr` on a 1-page and on a long generated PDF: flat, or growing with the pages?

    python benchmarks/bench_memory.py [--pages 300] [--model tesseract] [--keep DIR]

Both PDFs are written here with pypdfium2: US-letter pages, each with a few lines of text. Each runs
through `python cli.py ocr FILE --model M --format json` in a fresh process; the resident set size
(RSS) of that process and all its descendants (the inference worker included) is summed every
50 ms, and the highest sum is the peak. Pages are rendered and recognised one at a time, so the
peak for the long document should stay within 1.5x of the 1-page one; the script says whether it did
and exits 1 when it did not (or when a run failed).
"""
from __future__ import annotations

import argparse
import ctypes
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from utils.quality.benchmark import MB, tree_rss  # noqa: E402

LETTER = (612, 792)  # points
TARGET_RATIO = 1.5
LINES = ("Quarterly report of the regional office", "Revenue and costs by month, in thousands",
         "Staff: forty two people in three teams", "Outlook for the next year: steady growth",
         "Signed by the director and the accountant")


def _utf16(text: str):
    data = (text + "\x00").encode("utf-16-le")
    return ctypes.cast(ctypes.create_string_buffer(data, len(data)), ctypes.POINTER(ctypes.c_ushort))


def make_pdf(pages: int, path: Path) -> None:
    """US-letter pages with a heading and a few lines of text in Helvetica."""
    import pypdfium2 as pdfium
    import pypdfium2.raw as raw

    pdf = pdfium.PdfDocument.new()
    for number in range(pages):
        page = pdf.new_page(*LETTER)
        for row, line in enumerate((f"Page {number + 1} of {pages}", *LINES)):
            text = raw.FPDFPageObj_NewTextObj(pdf, b"Helvetica", 14.0)
            raw.FPDFText_SetText(text, _utf16(line))
            raw.FPDFPageObj_Transform(text, 1, 0, 0, 1, 72, LETTER[1] - 90 - 28 * row)
            raw.FPDFPage_InsertObject(page, text)
        raw.FPDFPage_GenerateContent(page)
    pdf.save(str(path))
    pdf.close()


def peak_rss_of(command: list[str], stdout_path: Path, interval: float = 0.05) -> tuple[int, float, int]:
    """(exit code, seconds, peak RSS in bytes of the command's process tree)."""
    peak = 0
    done = threading.Event()
    with stdout_path.open("w", encoding="utf-8") as out:
        started = time.perf_counter()
        child = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=subprocess.DEVNULL)
        process = psutil.Process(child.pid)

        def sample() -> None:
            nonlocal peak
            while not done.wait(interval):
                try:
                    peak = max(peak, tree_rss(process))
                except psutil.NoSuchProcess:
                    return

        sampler = threading.Thread(target=sample, name="rss-sampler", daemon=True)
        sampler.start()
        code = child.wait()
        seconds = time.perf_counter() - started
        done.set()
        sampler.join()
    return code, seconds, peak


def run(pages: int, model: str, folder: Path) -> dict:
    pdf = folder / f"letter_{pages}p.pdf"
    make_pdf(pages, pdf)
    result = folder / f"letter_{pages}p.json"
    code, seconds, peak = peak_rss_of([sys.executable, "cli.py", "ocr", str(pdf), "--model", model,
                                       "--format", "json"], result)
    read = failed = 0
    if result.stat().st_size:
        document = json.loads(result.read_text(encoding="utf-8"))["documents"][0]
        read = sum(1 for page in document["pages"] if page.get("error") is None and page["text"])
        failed = len(document["pages"]) - read + (document["error"] is not None)
    return {"pages": pages, "exit": code, "seconds": seconds, "peak_mb": peak / MB, "read": read, "failed": failed,
            "file_kb": pdf.stat().st_size / 1024}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=300, help="pages of the long document (default 300)")
    parser.add_argument("--model", default="tesseract")
    parser.add_argument("--keep", type=Path, help="write the PDFs and the JSON results here instead of a temp folder")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_memory_") as temp:
        folder = args.keep or Path(temp)
        folder.mkdir(parents=True, exist_ok=True)
        rows = [run(1, args.model, folder), run(args.pages, args.model, folder)]
    print(f"cli.py ocr --model {args.model} --format json; peak RSS of the process tree (CLI + worker), "
          f"sampled every 50 ms\n")
    print("| pages | file KB | read | failed | seconds | s/page | peak RSS MB |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['pages']} | {row['file_kb']:.0f} | {row['read']} | {row['failed']} | {row['seconds']:.1f} | "
              f"{row['seconds'] / row['pages']:.2f} | {row['peak_mb']:.0f} |")
    ratio = rows[1]["peak_mb"] / rows[0]["peak_mb"]
    ok = ratio <= TARGET_RATIO and all(row["exit"] == 0 and row["read"] == row["pages"] for row in rows)
    print(f"\n{args.pages} pages / 1 page: {ratio:.2f}x peak RSS (target: within {TARGET_RATIO}x) -> "
          f"{'ok' if ok else 'NOT MET'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
