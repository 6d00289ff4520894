"""RapidOCR 3.x with the ONNX models bundled in its wheel: works with pip alone, on any CPU."""
from __future__ import annotations

import importlib.util
import logging
import time

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from models.base import ModelAdapter
from models.contract import Availability, Block, RunOptions
from models.reading_order import rows_to_text
from models.registry import ModelSpec


class RapidOCROptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text_score: float = Field(0.5, ge=0, le=1, description="drop lines recognised below this confidence")
    use_angle_cls: bool = False


class RapidOCRAdapter(ModelAdapter):
    Options = RapidOCROptions
    supported_tasks = ("text", "layout")
    cpu_engine = True

    @classmethod
    def availability(cls, spec: ModelSpec) -> Availability:
        if importlib.util.find_spec("rapidocr") is None or importlib.util.find_spec("onnxruntime") is None:
            return Availability(available=False, status="not installed", reason="rapidocr / onnxruntime missing",
                                fix="pip install rapidocr onnxruntime")
        return Availability(available=True, status="ready", reason="bundled PP-OCR ONNX models (Latin/Chinese; no Cyrillic)")

    def load(self) -> None:
        from rapidocr import RapidOCR

        params = {"Global.text_score": self.options.text_score, "Global.use_cls": self.options.use_angle_cls,
                  "Global.log_level": "error"}
        if self.profile.threads:
            params["EngineConfig.onnxruntime.intra_op_num_threads"] = self.profile.threads
        self._engine = RapidOCR(params=params)
        logging.getLogger("RapidOCR").setLevel(logging.ERROR)

    def run(self, image: Image.Image, task: str, options: RunOptions, on_token=None):
        started = time.perf_counter()
        output = self._engine(np.asarray(image.convert("RGB"))[:, :, ::-1])  # RapidOCR expects BGR arrays
        blocks: list[Block] = []
        if output.boxes is not None:
            for quad, text, score in zip(output.boxes, output.txts, output.scores):
                xs, ys = quad[:, 0], quad[:, 1]
                blocks.append(Block(bbox=(float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max())),
                                    category="Line", text=str(text), score=round(float(score), 4)))
        text = rows_to_text(blocks)
        return self.result(task, text=text, markdown=text, blocks=blocks,
                           seconds=time.perf_counter() - started, width=image.width, height=image.height)

    def close(self) -> None:
        self._engine = None


ADAPTER = RapidOCRAdapter
