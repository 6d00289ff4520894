"""Tesseract 5 through tesserocr: the engine and its language data stay loaded between pages."""
from __future__ import annotations

import importlib.util
import os
import time
from pathlib import Path

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
        tesserocr = self._tesserocr
        started = time.perf_counter()
        api = self._api
        api.SetImage(image)
        api.Recognize()
        text = api.GetUTF8Text().strip()
        level = tesserocr.RIL.BLOCK if task == "layout" else tesserocr.RIL.TEXTLINE
        blocks: list[Block] = []
        iterator = api.GetIterator()
        if iterator is not None:
            for item in tesserocr.iterate_level(iterator, level):
                box = item.BoundingBox(level)
                if box is None:
                    continue
                content = (item.GetUTF8Text(level) or "").strip()
                category = BLOCK_CATEGORIES.get(item.BlockType(), "Text") if task == "layout" else "Line"
                if not content and category == "Text":
                    continue
                blocks.append(Block(bbox=tuple(float(v) for v in box), category=category, text=content,
                                    score=round(item.Confidence(level) / 100.0, 4)))
        api.Clear()
        return self.result(task, text=text, markdown=text, blocks=blocks,
                           seconds=time.perf_counter() - started, width=image.width, height=image.height)

    def close(self) -> None:
        api = getattr(self, "_api", None)
        if api is not None:
            api.End()
            self._api = None


ADAPTER = TesseractAdapter
