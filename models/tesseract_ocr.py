"""Tesseract 5 through tesserocr: the engines and their language data stay loaded between pages.

Languages are chosen per page. The configured set (default rus+eng) reads the page once; where the
letters it found are mostly Latin, the words it wrote in another script — Cyrillic look-alikes such as
"Раде" for "Page" — are read again, each on its own, with the Latin languages alone. Russian pages keep
the rus+eng reading (it beats rus alone: they hold English words) and English pages get no look-alikes,
for the cost of re-reading those few words. A document may name its own languages (RunOptions.languages).
"""
from __future__ import annotations

import importlib.util
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from models.base import ModelAdapter
from models.classic.layout import Line, Word, page_text, to_markdown
from models.classic.script import dominant_script, letter_script, script_letters, split_by_script
from models.classic.tessdata import find_tessdata, installed_languages, missing_languages
from models.contract import Availability, Block, RunOptions
from models.registry import ModelSpec

LANGUAGES_PATTERN = r"^[A-Za-z_]+(\+[A-Za-z_]+)*$"
# Tesseract's PolyBlockType (tesserocr.PT) -> the layout categories used across the app. Its
# HEADING_TEXT (2) marks any short isolated block, so it stays Text here.
BLOCK_CATEGORIES = {
    1: "Text", 2: "Text", 3: "Text", 4: "Formula", 5: "Formula", 6: "Table", 7: "Text", 8: "Caption",
    9: "Picture", 10: "Picture", 11: "Picture", 12: "Other", 13: "Other", 14: "Other",
}
SINGLE_LINE = 7  # tesserocr.PSM.SINGLE_LINE: how a look-alike word is read again, on its own

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
    languages: str = Field("rus+eng", pattern=LANGUAGES_PATTERN)
    psm: int = Field(3, ge=0, le=13, description="page segmentation mode")
    tessdata_dir: str | None = None
    script_check: bool = Field(True, description="on pages whose letters are mostly Latin, read the words written "
                                                 "in another script again with the Latin languages alone")


class TesseractAdapter(ModelAdapter):
    Options = TesseractOptions
    supported_tasks = ("text", "layout")
    cpu_engine = True
    MAX_EXTRA_ENGINES = 2  # engines for languages a document chose, beyond the configured ones

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
        missing = missing_languages(options.languages, tessdata)
        if missing:
            packages = " ".join(f"tesseract-ocr-{lang}" for lang in missing)
            return Availability(available=False, status="not installed",
                                reason=f"language data missing in {tessdata}: {', '.join(missing)}",
                                fix=f"sudo apt-get install {packages}")
        return Availability(available=True, status="ready", reason=f"languages {options.languages}, data in {tessdata}",
                            languages=tuple(installed_languages(tessdata)), default_languages=options.languages)

    def load(self) -> None:
        import tesserocr

        self._tesserocr = tesserocr
        tessdata = find_tessdata(self.options.tessdata_dir)
        if tessdata is None:
            raise RuntimeError("no Tesseract language data found (sudo apt-get install tesseract-ocr-eng)")
        self._tessdata = tessdata
        self._engines: OrderedDict[str, Any] = OrderedDict()
        self._pinned = {self.options.languages, *filter(None, [self._latin_subset(self.options.languages)])}
        for languages in self._pinned:  # loaded now, so that no page pays for it
            self._engine(languages)
        self.dtype = None

    def languages_for(self, options: RunOptions) -> str:
        """The languages a request asked for, checked against the installed data; else the configured ones."""
        chosen = options.languages
        if not chosen:
            return self.options.languages
        chosen = chosen.strip()
        if not re.fullmatch(LANGUAGES_PATTERN, chosen):
            raise ValueError(f"Tesseract languages {chosen!r}: give language codes joined by '+', e.g. rus+eng")
        missing = missing_languages(chosen, self._tessdata)
        if missing:
            raise ValueError(f"Tesseract has no language data for {', '.join(missing)} "
                             f"(installed: {', '.join(installed_languages(self._tessdata))}); "
                             f"install tesseract-ocr-{missing[0]}")
        return chosen

    def run(self, image: Image.Image, task: str, options: RunOptions, on_token=None):
        languages = self.languages_for(options)
        started = time.perf_counter()
        width, height = image.size
        warnings = []
        scale = 1.0
        if width > MAX_SIDE:
            scale = MAX_SIDE / width
            image = image.resize((MAX_SIDE, max(1, round(height * scale))), Image.Resampling.LANCZOS)
            warnings.append(f"the page is {width:,} px wide, over Tesseract's limit of {MAX_SIDE:,} px a side: "
                            f"read scaled down to {image.width:,}x{image.height:,} px")
        with_regions = task == "layout"
        if image.height > MAX_SIDE:
            strips = plan_strips(image.height, lambda lo, hi: _dark_pixels_per_row(image, lo, hi))
            lines, regions = self._recognise_strips(image, languages, strips, with_regions)
            warnings.append(f"the page is {image.height:,} px tall, over Tesseract's limit of {MAX_SIDE:,} px a side: "
                            f"read in {len(strips)} overlapping strips")
        else:
            lines, regions = self._recognise(image, languages, with_regions)
        if self.options.script_check:
            self._keep_to_page_script(image, lines, languages)
        lines = [line for line in lines if line.text]
        if scale != 1.0:
            lines = [_scaled(line, 1 / scale) for line in lines]
            regions = [(number, b.model_copy(update={"bbox": tuple(v / scale for v in b.bbox)}))
                       for number, b in regions]
        if task == "layout":
            blocks = [block.model_copy(update={"text": page_text([line for line in lines if line.block == number])})
                      for number, block in regions]
            blocks = [b for b in blocks if b.text or b.category != "Text"]
        else:
            blocks = [Block(bbox=line.bbox, category="Line", text=line.text, score=line.score,
                            words=[Block(bbox=tuple(float(v) for v in w.bbox), category="Word", text=w.text.strip(),
                                         score=w.score) for w in line.words if w.text.strip()])
                      for line in lines]
        return self.result(task, text=page_text(lines), markdown=to_markdown(lines), blocks=blocks,
                           warnings=warnings, seconds=time.perf_counter() - started, width=width, height=height)

    def _recognise_strips(self, image: Image.Image, languages: str, strips: list[tuple[int, int, int, int]],
                          with_regions: bool) -> tuple[list[Line], list[tuple[int, Block]]]:
        """Each strip recognised on its own; a line or block belongs to the strip whose own band holds its
        middle. Block numbers run on across strips."""
        def own(box: tuple[float, float, float, float], own_top: int, own_bottom: int) -> bool:
            return own_top <= (box[1] + box[3]) / 2 < own_bottom

        lines: list[Line] = []
        regions: list[tuple[int, Block]] = []
        first_block = 0
        for top, bottom, own_top, own_bottom in strips:
            strip_lines, strip_regions = self._recognise(image.crop((0, top, image.width, bottom)), languages,
                                                         with_regions)
            for line in strip_lines:
                moved = _scaled(line, 1.0, dy=top)
                moved.block += first_block
                if own(moved.bbox, own_top, own_bottom):
                    lines.append(moved)
            for number, block in strip_regions:
                x1, y1, x2, y2 = block.bbox
                moved_block = block.model_copy(update={"bbox": (x1, y1 + top, x2, y2 + top)})
                if own(moved_block.bbox, own_top, own_bottom):
                    regions.append((number + first_block if number >= 0 else -1, moved_block))
            first_block += 1 + max([line.block for line in strip_lines] + [n for n, _ in strip_regions], default=-1)
        return lines, regions

    def _recognise(self, image: Image.Image, languages: str,
                   with_regions: bool = False) -> tuple[list[Line], list[tuple[int, Block]]]:
        """One Tesseract pass over the image: its lines of words in reading order (line.block numbers
        Tesseract's blocks) and, for layout, its blocks as (number, Block) with the text left empty."""
        tesserocr = self._tesserocr
        ril = tesserocr.RIL
        api = self._engine(languages)
        api.SetPageSegMode(self.options.psm)
        api.SetImage(image)
        try:
            api.Recognize()
            iterator = api.GetIterator()
            if iterator is None:
                return [], []
            lines: list[Line] = []
            block = -1
            line_starts = paragraph_starts = False
            for item in tesserocr.iterate_level(iterator, ril.WORD):
                if item.IsAtBeginningOf(ril.BLOCK):
                    block += 1
                line_starts |= item.IsAtBeginningOf(ril.TEXTLINE)
                paragraph_starts |= item.IsAtBeginningOf(ril.PARA)
                # An empty word (a blank page, a blot) is skipped before anything else is asked of it:
                # RowAttributes() on one crashes the process.
                text = "" if item.Empty(ril.WORD) else item.GetUTF8Text(ril.WORD).strip()
                if not text:
                    continue
                if line_starts or not lines:
                    lines.append(Line(words=[], size=item.RowAttributes()["row_height"], block=block,
                                      new_paragraph=paragraph_starts,
                                      score=round(item.Confidence(ril.TEXTLINE) / 100.0, 4)))
                    line_starts = paragraph_starts = False
                lines[-1].words.append(Word(text=text, bbox=item.BoundingBox(ril.WORD),
                                            score=round(item.Confidence(ril.WORD) / 100.0, 4)))
            regions = self._regions(api) if with_regions else []
        finally:
            api.Clear()
        return [line for line in lines if line.words], regions

    def _regions(self, api) -> list[tuple[int, Block]]:
        """Every block Tesseract found, pictures and rules included, numbered like the text blocks."""
        tesserocr = self._tesserocr
        regions = []
        text_block = -1
        for item in tesserocr.iterate_level(api.GetIterator(), tesserocr.RIL.BLOCK):
            box = item.BoundingBox(tesserocr.RIL.BLOCK)
            category = BLOCK_CATEGORIES.get(item.BlockType(), "Text")
            has_text = not item.Empty(tesserocr.RIL.WORD)
            text_block += has_text
            if box is None:
                continue
            regions.append((text_block if has_text else -1,
                            Block(bbox=tuple(float(v) for v in box), category=category,
                                  score=round(item.Confidence(tesserocr.RIL.BLOCK) / 100.0, 4))))
        return regions

    def _keep_to_page_script(self, image: Image.Image, lines: list[Line], languages: str) -> None:
        """On a page whose letters are mostly Latin, read the words written in another script again with
        the Latin languages alone. Only this direction: Latin words on a Cyrillic page are real (names,
        terms, references), while Cyrillic words on an English page were look-alikes in every test scan."""
        latin = self._latin_subset(languages)
        words = [w for line in lines for w in line.words]
        if latin is None or dominant_script(script_letters(w.text for w in words)) != "Latin":
            return
        foreign = [w for w in words if any(letter_script(ch) not in (None, "Latin") for ch in w.text)]
        if not foreign:
            return
        api = self._engine(latin)
        api.SetPageSegMode(SINGLE_LINE)
        try:
            for word in foreign:
                api.SetImage(image.crop(_padded(word.bbox, image.size)))
                word.text = " ".join(api.GetUTF8Text().split())
                word.score = round(api.MeanTextConf() / 100.0, 4)
        finally:
            api.Clear()
        for line in lines:
            line.words = [w for w in line.words if w.text]

    @staticmethod
    def _latin_subset(languages: str) -> str | None:
        """The Latin-script languages of a set that also holds languages of another script."""
        latin, other = split_by_script(languages.split("+"), "Latin")
        return "+".join(latin) if latin and other else None

    def _engine(self, languages: str):
        """A resident Tesseract engine for these languages; engines a document asked for are kept a while."""
        api = self._engines.get(languages)
        if api is None:
            tesserocr = self._tesserocr
            api = tesserocr.PyTessBaseAPI(path=str(self._tessdata) + "/", lang=languages, psm=self.options.psm,
                                          oem=tesserocr.OEM.LSTM_ONLY)
            self._engines[languages] = api
            extra = [key for key in self._engines if key not in self._pinned]
            for key in extra[:-self.MAX_EXTRA_ENGINES]:
                self._engines.pop(key).End()
        self._engines.move_to_end(languages)
        return api

    def close(self) -> None:
        engines = getattr(self, "_engines", None)
        while engines:
            engines.popitem()[1].End()


def _padded(box: tuple[float, float, float, float], size: tuple[int, int]) -> tuple[int, int, int, int]:
    """A word's box (left, top, right, bottom) with a margin: a little above and below for the accents
    and descenders, hardly any at the sides so that no neighbour's letters come in."""
    x1, y1, x2, y2 = box
    height = y2 - y1
    return (max(0, int(x1 - 0.05 * height) - 1), max(0, int(y1 - 0.2 * height) - 1),
            min(size[0], int(x2 + 0.05 * height) + 1), min(size[1], int(y2 + 0.2 * height) + 1))


def _scaled(line: Line, factor: float, dy: float = 0.0) -> Line:
    """The line with its boxes scaled by factor, then moved down by dy."""
    words = [Word(text=w.text, bbox=(w.bbox[0] * factor, w.bbox[1] * factor + dy, w.bbox[2] * factor,
                                     w.bbox[3] * factor + dy), score=w.score) for w in line.words]
    return replace(line, words=words, size=line.size * factor if line.size else line.size)


def _dark_pixels_per_row(image: Image.Image, lo: int, hi: int) -> np.ndarray:
    band = np.asarray(image.crop((0, lo, image.width, hi)).convert("L"))
    return (band < 128).sum(axis=1)


ADAPTER = TesseractAdapter
