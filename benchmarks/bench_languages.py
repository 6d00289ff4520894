"""Tesseract's languages per page: Cyrillic look-alikes on English pages, CER on English and Russian
pages, and seconds per page, before and after the per-page script check.

    python benchmarks/bench_languages.py [DIR] [--rounds 2] [--modes before,unchecked,after,eng,rus] [--json OUT]

DIR holds page images with their ground truth beside them (<stem>.txt) and a MANIFEST.tsv whose
`language` column says which pages are Russian ("ru"); every other page counts as Latin-script (English).
Modes:
  before     tesserocr alone, as the adapter ran it before: rus+eng, Recognize, GetUTF8Text, line boxes
  unchecked  the adapter with script_check off: rus+eng, the page's structure and Markdown built
  after      the adapter as configured (rus+eng, script check on): the default
  eng, rus   the adapter with the document's languages chosen (RunOptions.languages)
Every page runs in every mode in turn, `--rounds` times; the best time per page and mode counts, so
the noise of a shared machine does not land on one mode only. Beside wall time, the process's CPU time
(all threads) is reported: on a busy machine it moves far less than wall time. CER is the mean over pages of
utils.quality.metrics.cer (normalised text).
"""
from __future__ import annotations

import argparse
import csv
import json
import re
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from PIL import Image  # noqa: E402

from models.classic.tessdata import find_tessdata  # noqa: E402
from models.contract import RunOptions  # noqa: E402
from models.registry import ModelSpec  # noqa: E402
from models.tesseract_ocr import TesseractAdapter  # noqa: E402
from utils.config import cached_settings  # noqa: E402
from utils.quality.metrics import cer  # noqa: E402

DEFAULT_DIR = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "images"
MODES = ("before", "unchecked", "after", "eng", "rus")
CYRILLIC = re.compile("[\u0400-\u04ff]")


def cyrillic_words(text: str) -> int:
    return sum(1 for word in text.split() if CYRILLIC.search(word))


def load_pages(folder: Path) -> list[tuple[str, str, Image.Image, str]]:
    """(name, "ru" | "en", image, truth) for every image with a ground truth."""
    languages = {}
    manifest = folder.parent / "MANIFEST.tsv" if not (folder / "MANIFEST.tsv").exists() else folder / "MANIFEST.tsv"
    if manifest.exists():
        with manifest.open(encoding="utf-8") as handle:
            for row in csv.DictReader(handle, delimiter="\t"):
                languages[Path(row["file"]).name] = row["language"]
    pages = []
    for path in sorted(folder.iterdir()):
        truth = path.with_suffix(".txt")
        if path.suffix.lower() not in (".png", ".jpg", ".jpeg", ".tif", ".tiff") or not truth.exists():
            continue
        with Image.open(path) as img:
            image = img.convert("RGB")
        group = "ru" if languages.get(path.name, "").strip() == "ru" else "en"
        pages.append((path.name, group, image, truth.read_text(encoding="utf-8")))
    return pages


class Before:
    """What the adapter did before the script check: one rus+eng pass, its text and line boxes."""

    def __init__(self, languages: str, psm: int):
        import tesserocr

        self._tesserocr = tesserocr
        self._api = tesserocr.PyTessBaseAPI(path=str(find_tessdata()) + "/", lang=languages, psm=psm,
                                            oem=tesserocr.OEM.LSTM_ONLY)

    def __call__(self, image: Image.Image) -> str:
        tesserocr = self._tesserocr
        self._api.SetImage(image)
        self._api.Recognize()
        text = self._api.GetUTF8Text().strip()
        iterator = self._api.GetIterator()
        if iterator is not None:
            for item in tesserocr.iterate_level(iterator, tesserocr.RIL.TEXTLINE):
                item.BoundingBox(tesserocr.RIL.TEXTLINE), item.GetUTF8Text(tesserocr.RIL.TEXTLINE)
                item.Confidence(tesserocr.RIL.TEXTLINE)
        self._api.Clear()
        return text

    def close(self) -> None:
        self._api.End()


def reader(adapter: TesseractAdapter, options: RunOptions) -> Callable[[Image.Image], str]:
    return lambda image: adapter.run(image, "text", options).text


def runners(modes: list[str]) -> tuple[dict[str, Callable[[Image.Image], str]], list[Callable[[], None]]]:
    settings = cached_settings()
    spec = settings.model("tesseract")
    options = spec.options
    calls: dict[str, Callable[[Image.Image], str]] = {}
    closers: list[Callable[[], None]] = []

    def adapter(**overrides) -> TesseractAdapter:
        made = TesseractAdapter("tesseract", ModelSpec(**{**spec.model_dump(), "options": {**options, **overrides}}),
                                settings.profile)
        made.load()
        closers.append(made.close)
        return made

    checked = None
    for mode in modes:
        if mode == "before":
            before = Before(options.get("languages", "rus+eng"), options.get("psm", 3))
            closers.append(before.close)
            calls[mode] = before
        elif mode == "unchecked":
            calls[mode] = reader(adapter(script_check=False), RunOptions())
        else:  # one adapter for the default and the languages chosen per document, as in the app
            checked = checked or adapter()
            calls[mode] = reader(checked, RunOptions(languages=None if mode == "after" else mode))
    return calls, closers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", nargs="?", type=Path, default=DEFAULT_DIR)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--json", type=Path, help="write the per-page figures here")
    args = parser.parse_args()
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown or not args.folder.is_dir():
        parser.error(f"unknown modes {unknown}" if unknown else f"no such folder: {args.folder}")
    pages = load_pages(args.folder)
    if not pages:
        parser.error(f"no images with ground truth in {args.folder}")
    calls, closers = runners(modes)
    best = {mode: [float("inf")] * len(pages) for mode in modes}
    best_cpu = {mode: [float("inf")] * len(pages) for mode in modes}
    texts = {mode: [""] * len(pages) for mode in modes}
    try:
        for i, (name, _group, image, _truth) in enumerate(pages):
            for _ in range(args.rounds):
                for mode in modes:
                    started, started_cpu = time.perf_counter(), time.process_time()
                    texts[mode][i] = calls[mode](image)
                    best[mode][i] = min(best[mode][i], time.perf_counter() - started)
                    best_cpu[mode][i] = min(best_cpu[mode][i], time.process_time() - started_cpu)
            print(f"{name}: " + ", ".join(f"{m} {best[m][i]:.2f}s" for m in modes), file=sys.stderr, flush=True)
    finally:
        for close in closers:
            close()

    rows = []
    for mode in modes:
        row = {"mode": mode}
        for group in ("en", "ru"):
            index = [i for i, page in enumerate(pages) if page[1] == group]
            if not index:
                continue
            row[f"{group}_pages"] = len(index)
            row[f"{group}_cer"] = statistics.mean(cer(texts[mode][i], pages[i][3]) for i in index)
            row[f"{group}_s_per_page"] = statistics.mean(best[mode][i] for i in index)
            row[f"{group}_cpu_s_per_page"] = statistics.mean(best_cpu[mode][i] for i in index)
            row[f"{group}_cyrillic_words"] = sum(cyrillic_words(texts[mode][i]) for i in index)
        rows.append(row)
    print(f"{len(pages)} pages from {args.folder}; best of {args.rounds} rounds per page and mode")
    print("| mode | English: words with Cyrillic | English CER | Russian CER | English s/page (CPU s) "
          "| Russian s/page (CPU s) |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['mode']} | {row.get('en_cyrillic_words', '-')} | {row.get('en_cer', 0):.2%} | "
              f"{row.get('ru_cer', 0):.2%} | {row.get('en_s_per_page', 0):.2f} ({row.get('en_cpu_s_per_page', 0):.2f}) "
              f"| {row.get('ru_s_per_page', 0):.2f} ({row.get('ru_cpu_s_per_page', 0):.2f}) |")
    if args.json:
        per_page = [{"page": name, "group": group,
                     **{f"{m}_s": best[m][i] for m in modes},
                     **{f"{m}_cpu_s": best_cpu[m][i] for m in modes},
                     **{f"{m}_cer": cer(texts[m][i], truth) for m in modes},
                     **{f"{m}_cyrillic_words": cyrillic_words(texts[m][i]) for m in modes}}
                    for i, (name, group, _image, truth) in enumerate(pages)]
        args.json.write_text(json.dumps({"summary": rows, "pages": per_page}, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
