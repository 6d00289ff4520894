"""Tesseract 5 through tesserocr: the engine and its language data stay loaded between pages."""
from __future__ import annotations

import importlib.util
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from models.base import ModelAdapter
from models.contract import Availability, Block, RunOptions
from models.registry import ModelSpec

TESSDATA_CANDIDATES = (
    "/usr/share/tesseract-ocr/5/tessdata",
    "/usr/share/tesseract-ocr/4.00/tessdata",
    "/usr/share/tessdata",
    "/usr/local/share/tessdata",
    "/opt/homebrew/share/tessdata",
)
# Tesseract's PolyBlockType numbers -> the layout categories used across the app.
BLOCK_CATEGORIES = {
    1: "Text", 2: "Text", 3: "Text", 4: "Section-header", 5: "Text", 6: "Table", 7: "Text",
    8: "Picture", 9: "Picture", 10: "Picture", 11: "Formula", 12: "Formula", 13: "Other", 14: "Other",
}

# Tesseract keeps coordinates in 16-bit integers: recognition fails ("No image set?") once a side
# reaches 32,768 px. A taller page is read in strips, a wider one scaled down.
MAX_SIDE = 32767
STRIP_OVERLAP = 512  # px shared by neighbouring strips, so a line at a strip's edge is whole in one of them
CUT_WINDOW = 4096  # each strip ends at the emptiest row of this band, so cuts fall between lines


def plan_strips(height: int, ink: Callable[[int, int], np.ndarray], limit: int = MAX_SIDE,
                overlap: int = STRIP_OVERLAP, window: int = CUT_WINDOW) -> list[tuple[int, int, int, int]]:
    """(top, bottom, own_top, own_bottom) of each strip: a strip reads rows top..bottom and keeps the
    lines whose middle lies in own_top..own_bottom; own bands tile the page without overlap.

    `ink(lo, hi)` counts the dark pixels of each row in lo..hi; a cut goes at the emptiest row of
    the last `window` rows that still leave `overlap` rows below it (the lowest such row on ties).
    """
    strips = []
    top = own_top = 0
    while True:
        bottom = min(top + limit, height)
        if bottom == height:
            strips.append((top, bottom, own_top, height))
            return strips
        lo, hi = max(own_top + 1, bottom - window), bottom - overlap
        counts = ink(lo, hi)
        cut = lo + len(counts) - 1 - int(np.argmin(counts[::-1]))
        strips.append((top, bottom, own_top, cut))
        top, own_top = cut - overlap, cut


class TesseractOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    languages: str = Field("rus+eng", pattern=r"^[A-Za-z_]+(\+[A-Za-z_]+)*$")
    psm: int = Field(3, ge=0, le=13, description="page segmentation mode")
    tessdata_dir: str | None = None


def find_tessdata(configured: str | None) -> Path | None:
    for candidate in (configured, os.environ.get("TESSDATA_PREFIX"), *TESSDATA_CANDIDATES):
        if candidate and Path(candidate).is_dir() and any(Path(candidate).glob("*.traineddata")):
            return Path(candidate)
    return None


class TesseractAdapter(ModelAdapter):
    Options = TesseractOptions
    supported_tasks = ("text", "layout")
    cpu_engine = True

    @classmethod
    def availability(cls, spec: ModelSpec) -> Availability:
        options = TesseractOptions.model_validate(spec.options)
        if importlib.util.find_spec("tesserocr") is None:
            return Availability(available=False, status="not installed", reason="Python package tesserocr is missing",
                                fix="pip install tesserocr")
        tessdata = find_tessdata(options.tessdata_dir)
        if tessdata is None:
            return Availability(available=False, status="not installed", reason="no Tesseract language data found",
                                fix="sudo apt-get install tesseract-ocr tesseract-ocr-eng tesseract-ocr-rus")
        missing = [lang for lang in options.languages.split("+") if not (tessdata / f"{lang}.traineddata").exists()]
        if missing:
            packages = " ".join(f"tesseract-ocr-{lang}" for lang in missing)
            return Availability(available=False, status="not installed",
                                reason=f"language data missing in {tessdata}: {', '.join(missing)}",
                                fix=f"sudo apt-get install {packages}")
        return Availability(available=True, status="ready", reason=f"languages {options.languages}, data in {tessdata}")

    def load(self) -> None:
        import tesserocr

        self._tesserocr = tesserocr
        tessdata = find_tessdata(self.options.tessdata_dir)
        self._api = tesserocr.PyTessBaseAPI(path=str(tessdata) + "/", lang=self.options.languages,
                                            psm=self.options.psm, oem=tesserocr.OEM.LSTM_ONLY)
        self.dtype = None

    def run(self, image: Image.Image, task: str, options: RunOptions, on_token=None):
        started = time.perf_counter()
        width, height = image.size
        warnings = []
        scale = 1.0
        if width > MAX_SIDE:
            scale = MAX_SIDE / width
            image = image.resize((MAX_SIDE, max(1, round(height * scale))), Image.Resampling.LANCZOS)
            warnings.append(f"the page is {width:,} px wide, over Tesseract's limit of {MAX_SIDE:,} px a side: "
                            f"read scaled down to {image.width:,}x{image.height:,} px")
        if image.height > MAX_SIDE:
            strips = plan_strips(image.height, lambda lo, hi: _dark_pixels_per_row(image, lo, hi))
            text, blocks = self._read_strips(image, task, strips)
            warnings.append(f"the page is {image.height:,} px tall, over Tesseract's limit of {MAX_SIDE:,} px a side: "
                            f"read in {len(strips)} overlapping strips")
        else:
            text, blocks = self._read(image, task)
        if scale != 1.0:
            blocks = [b.model_copy(update={"bbox": tuple(v / scale for v in b.bbox)}) for b in blocks]
        return self.result(task, text=text, markdown=text, blocks=blocks, seconds=time.perf_counter() - started,
                           width=width, height=height, warnings=warnings)

    def _recognize(self, image: Image.Image) -> None:
        self._api.SetImage(image)
        self._api.Recognize()

    def _items(self, level: int, task: str, dy: int = 0) -> list[tuple[Block, bool]]:
        """The recognised items at `level`, moved down by dy, each with whether it starts a paragraph."""
        tesserocr = self._tesserocr
        items: list[tuple[Block, bool]] = []
        iterator = self._api.GetIterator()
        if iterator is None:
            return items
        for item in tesserocr.iterate_level(iterator, level):
            box = item.BoundingBox(level)
            if box is None:
                continue
            content = (item.GetUTF8Text(level) or "").strip()
            category = BLOCK_CATEGORIES.get(item.BlockType(), "Text") if task == "layout" else "Line"
            if not content and category == "Text":
                continue
            x1, y1, x2, y2 = (float(v) for v in box)
            block = Block(bbox=(x1, y1 + dy, x2, y2 + dy), category=category, text=content,
                          score=round(item.Confidence(level) / 100.0, 4))
            items.append((block, bool(item.IsAtBeginningOf(tesserocr.RIL.PARA))))
        return items

    def _level(self, task: str) -> int:
        return self._tesserocr.RIL.BLOCK if task == "layout" else self._tesserocr.RIL.TEXTLINE

    def _read(self, image: Image.Image, task: str) -> tuple[str, list[Block]]:
        self._recognize(image)
        text = self._api.GetUTF8Text().strip()
        blocks = [block for block, _ in self._items(self._level(task), task)]
        self._api.Clear()
        return text, blocks

    def _read_strips(self, image: Image.Image, task: str,
                     strips: list[tuple[int, int, int, int]]) -> tuple[str, list[Block]]:
        """Each strip recognised on its own; an item belongs to the strip whose own band holds its middle.
        The text is rebuilt from the kept lines: a blank line between paragraphs, as Tesseract writes it."""
        def own(block: Block, own_top: int, own_bottom: int) -> bool:
            return own_top <= (block.bbox[1] + block.bbox[3]) / 2 < own_bottom

        parts: list[str] = []
        blocks: list[Block] = []
        for top, bottom, own_top, own_bottom in strips:
            self._recognize(image.crop((0, top, image.width, bottom)))
            lines = [(b, starts) for b, starts in self._items(self._tesserocr.RIL.TEXTLINE, "text", top)
                     if own(b, own_top, own_bottom)]
            for line, starts_paragraph in lines:
                if parts:
                    parts.append("\n\n" if starts_paragraph else "\n")
                parts.append(line.text)
            if task == "layout":
                blocks += [b for b, _ in self._items(self._level(task), task, top) if own(b, own_top, own_bottom)]
            else:
                blocks += [b for b, _ in lines]
            self._api.Clear()
        return "".join(parts).strip(), blocks

    def close(self) -> None:
        api = getattr(self, "_api", None)
        if api is not None:
            api.End()
            self._api = None


def _dark_pixels_per_row(image: Image.Image, lo: int, hi: int) -> np.ndarray:
    band = np.asarray(image.crop((0, lo, image.width, hi)).convert("L"))
    return (band < 128).sum(axis=1)


ADAPTER = TesseractAdapter
