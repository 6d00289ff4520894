"""RapidOCR 3.x with the ONNX models bundled in its wheel: works with pip alone, on any CPU.

Its bundled models read Latin and Chinese only. Letters of another script come back as nothing (a
Russian line keeps only its digits, spaces and punctuation), so a page where many words came back
empty gets a warning with the engine that reads it, naming the page's script where Tesseract's script
detection is installed (run only on such pages: the common path pays nothing).
"""
from __future__ import annotations

import importlib.util
import logging
import time
from typing import Any

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from models.base import ModelAdapter
from models.classic.layout import Line, Word, to_markdown
from models.classic.script import OsdScriptDetector, unread_share
from models.contract import Availability, Block, RunOptions
from models.reading_order import group_rows, rows_to_text
from models.registry import ModelSpec

SCRIPTS = ("Latin", "Han")  # what the bundled PP-OCR models read
# A page whose words came back empty this often holds a script the models lack. Measured: the 22
# English shared scans at most 0.05, the 8 Russian pages at least 0.54, a page of half Russian lines 0.22.
UNREAD_LIMIT = 0.15
TESSERACT_LANGUAGE = {"Cyrillic": "rus", "Greek": "ell", "Arabic": "ara", "Hebrew": "heb", "Devanagari": "hin",
                      "Thai": "tha", "Hangul": "kor", "Japanese": "jpn"}


class RapidOCROptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text_score: float = Field(0.5, ge=0, le=1, description="drop lines recognised below this confidence")
    use_angle_cls: bool = False
    script_check: bool = Field(True, description="warn when most of a page came back empty: a script the "
                                                 "bundled models do not read")


class RapidOCRAdapter(ModelAdapter):
    Options = RapidOCROptions
    supported_tasks = ("text", "layout")
    cpu_engine = True

    @classmethod
    def availability(cls, spec: ModelSpec) -> Availability:
        if importlib.util.find_spec("rapidocr") is None or importlib.util.find_spec("onnxruntime") is None:
            return Availability(available=False, status="not installed", reason="rapidocr / onnxruntime missing",
                                fix="pip install rapidocr onnxruntime")
        return Availability(available=True, status="ready",
                            reason="bundled PP-OCR ONNX models (Latin/Chinese; no Cyrillic)")

    def load(self) -> None:
        from rapidocr import RapidOCR

        params = {"Global.text_score": self.options.text_score, "Global.use_cls": self.options.use_angle_cls,
                  "Global.log_level": "error"}
        if self.profile.threads:
            params["EngineConfig.onnxruntime.intra_op_num_threads"] = self.profile.threads
        self._engine: Any = RapidOCR(params=params)  # its call's result type is a union of step outputs
        logging.getLogger("RapidOCR").setLevel(logging.ERROR)
        self._detector: OsdScriptDetector | None = None
        self._detector_tried = False

    def run(self, image: Image.Image, task: str, options: RunOptions, on_token=None):
        started = time.perf_counter()
        output = self._engine(np.asarray(image.convert("RGB"))[:, :, ::-1])  # RapidOCR expects BGR arrays
        blocks: list[Block] = []
        raw: list[str] = []  # as recognised: the spaces left where letters were dropped count
        if output.boxes is not None:
            for quad, text, score in zip(output.boxes, output.txts, output.scores):
                xs, ys = quad[:, 0], quad[:, 1]
                raw.append(str(text))
                blocks.append(Block(bbox=(float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max())),
                                    category="Line", text=" ".join(str(text).split()), score=round(float(score), 4)))
        warnings = self._script_warnings(image, raw) if self.options.script_check else []
        lines = [Line(words=[Word(text=b.text, bbox=b.bbox) for b in row if b.text]) for row in group_rows(blocks)]
        return self.result(task, text=rows_to_text(blocks), markdown=to_markdown(lines), blocks=blocks,
                           warnings=warnings, seconds=time.perf_counter() - started,
                           width=image.width, height=image.height)

    def _script_warnings(self, image: Image.Image, raw: list[str]) -> list[str]:
        share = unread_share(raw)
        if share < UNREAD_LIMIT:
            return []
        script = self._detect_script(image)
        if script is None or script in SCRIPTS:  # OSD missing, unsure, or outvoted by the Latin part of the page
            return [f"{share:.0%} of the words on this page came back empty: part of it is probably in a script "
                    "RapidOCR's bundled models do not read (they read Latin and Chinese only) — for Cyrillic "
                    "use Tesseract (rus+eng)"]
        language = TESSERACT_LANGUAGE.get(script)
        engine = f"Tesseract ({language}+eng)" if language else "Tesseract with that script's language data"
        return [f"this page looks {script}; RapidOCR's bundled models read Latin and Chinese only "
                f"({share:.0%} of its words came back empty) — use {engine}"]

    def _detect_script(self, image: Image.Image) -> str | None:
        if not self._detector_tried:  # loaded on the first doubtful page only
            self._detector_tried = True
            self._detector = OsdScriptDetector.create()
        return self._detector.detect(image) if self._detector is not None else None

    def close(self) -> None:
        self._engine = None
        if self._detector is not None:
            self._detector.close()
            self._detector = None


ADAPTER = RapidOCRAdapter
