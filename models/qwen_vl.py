"""Qwen2-VL and Qwen3-VL through transformers Auto classes and qwen-vl-utils.

One adapter for the family: the entries differ in options (family, pixel budget, caps), not code.
Pixel budgets are in the model's own unit: 28 px for Qwen2-VL (patch 14, merge 2), 32 px for
Qwen3-VL (patch 16). The page is resized to multiples of the unit inside [min_pixels, max_pixels]
(qwen-vl-utils does the resize to the size computed here) and the processor is told not to resize
again, so the budget in options, or in RunOptions.max_pixels lowered by the guard after an OOM, is
exactly what the model sees.

Layout: both families ground on a 0..1000 grid relative to the image (Qwen2-VL paper, arXiv
2409.12191; Qwen3-VL's cookbooks). Qwen2-VL writes boxes with its special tokens,
<|object_ref_start|>text<|object_ref_end|><|box_start|>(x1,y1),(x2,y2)<|box_end|>, so its output is
decoded with special tokens kept. Qwen3-VL answers its OCR cookbook's text-spotting prompt with a
[{'bbox_2d': [...], 'text_content': ...}] list, JSON or a Python literal.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from PIL import Image
from pydantic import Field, model_validator

from models.contract import CHAT, RunOptions
from models.vlm.base import VLM_TASKS, LoadPlan, Parsed, Size, VLMAdapter, fit_to_budget
from models.vlm.generation import VLMOptions
from models.vlm.layout_parsing import blocks_to_text, parse_qwen_grounding, strip_special_tokens

UNIT = {"qwen2_vl": 28, "qwen3_vl": 32}
MIN_UNITS, MAX_UNITS = 4, 16384  # the range qwen-vl-utils keeps an explicitly sized image in
TEXT_PROMPT = "Please output only the text content from the image without any additional descriptions or formatting."
# Qwen2-VL's grounding markup, asked for in its own special tokens (the tokenizer maps them to their ids).
QWEN2_GROUNDING_PROMPT = (
    "Find every line of text in the image. For each line, output the line's text as "
    "<|object_ref_start|>text<|object_ref_end|> followed by its bounding box as "
    "<|box_start|>(x1,y1),(x2,y2)<|box_end|>, in reading order.")
# Qwen3-VL's OCR cookbook: line-level text spotting.
QWEN3_SPOTTING_PROMPT = ("Spotting all the text in the image with line-level, and output in JSON format as "
                         "[{'bbox_2d': [x1, y1, x2, y2], 'text_content': 'text'}, ...].")
PROMPTS = {
    "qwen2_vl": {
        "text": TEXT_PROMPT,
        "markdown": ("Convert the document in this image to Markdown: keep headings, lists and tables "
                     "(as Markdown tables) and the reading order. Output only the Markdown."),
        "layout": QWEN2_GROUNDING_PROMPT,
    },
    "qwen3_vl": {"text": TEXT_PROMPT, "markdown": "qwenvl markdown", "layout": QWEN3_SPOTTING_PROMPT},
}
# Qwen3-VL's cookbook allows 8192 new tokens for a page of text spotting.
TOKEN_CAPS = {
    "qwen2_vl": {"text": 2048, "markdown": 4096, "layout": 4096, "prompt": 1024},
    "qwen3_vl": {"text": 2048, "markdown": 4096, "layout": 8192, "prompt": 1024},
}
NO_BOXES = "no text lines with boxes could be parsed from the output; showing it as is"


class QwenVLOptions(VLMOptions):
    family: Literal["qwen2_vl", "qwen3_vl"]
    min_pixels: int | None = Field(None, description="default 512 units^2")
    max_pixels: int | None = Field(None, description="default 2048 units^2")
    prompts: dict[str, str] = Field(default_factory=dict, description="per-task prompt overrides")

    @model_validator(mode="after")
    def _fill(self):
        unit = UNIT[self.family]
        self.min_pixels = self.min_pixels or 512 * unit * unit
        self.max_pixels = self.max_pixels or 2048 * unit * unit
        if "max_new_tokens" not in self.model_fields_set:
            self.max_new_tokens = dict(TOKEN_CAPS[self.family])
        low, high = MIN_UNITS * unit * unit, MAX_UNITS * unit * unit
        if not low <= self.min_pixels <= self.max_pixels <= high:
            raise ValueError(f"need {low} <= min_pixels <= max_pixels <= {high}, "
                             f"got {self.min_pixels}, {self.max_pixels}")
        unknown = set(self.prompts) - {"text", "markdown", "layout"}
        if unknown:
            raise ValueError(f"prompts: unknown tasks {sorted(unknown)}")
        return self


def pixel_budget(options: QwenVLOptions, run: RunOptions) -> tuple[int, int]:
    """(min_pixels, max_pixels) for this request: RunOptions.max_pixels replaces the configured max
    (within what the pipeline accepts), and a lower max also lowers the min."""
    assert options.min_pixels is not None and options.max_pixels is not None  # filled by the validator
    unit = UNIT[options.family]
    max_pixels = min(max(run.max_pixels or options.max_pixels, MIN_UNITS * unit * unit), MAX_UNITS * unit * unit)
    return min(options.min_pixels, max_pixels), max_pixels


class QwenVLAdapter(VLMAdapter[QwenVLOptions]):
    Options = QwenVLOptions
    supported_tasks = (*VLM_TASKS, CHAT)
    packages = ("torch", "transformers", "qwen_vl_utils", "torchvision")
    keep_unquantized = ("visual", "lm_head")

    @property
    def unit(self) -> int:
        return UNIT[self.options.family]

    def float16_allowed(self) -> bool:
        return self.options.family != "qwen2_vl"  # Qwen2-VL gives inf/nan in fp16 (transformers PR #33312)

    def load_model(self, path: Path, plan: LoadPlan) -> None:
        from transformers import AutoModelForImageTextToText, AutoProcessor

        model_type = json.loads((path / "config.json").read_text()).get("model_type")
        if model_type != self.options.family:  # checked before gigabytes are loaded
            raise ValueError(f"options.family is {self.options.family} but {path} holds a {model_type} checkpoint")
        self._processor = AutoProcessor.from_pretrained(path, local_files_only=True)
        self._model = AutoModelForImageTextToText.from_pretrained(path, **self.from_pretrained_kwargs(plan)).eval()
        self._tokenizer = self._processor.tokenizer

    def input_size(self, page_size: Size, run: RunOptions) -> Size:
        return fit_to_budget(*page_size, self.unit, *pixel_budget(self.options, run))

    def pixel_range(self) -> tuple[int, int]:
        return pixel_budget(self.options, RunOptions())

    def task_prompt(self, task: str) -> str:
        return self.options.prompts.get(task) or PROMPTS[self.options.family][task]

    def encode(self, image: Image.Image, prompt: str, input_size: Size) -> dict:
        return self.encode_chat([image], [input_size], [("user", prompt)])[0]

    def encode_chat(self, images: Sequence[Image.Image], sizes: Sequence[Size],
                    turns: Sequence[tuple[str, str]]) -> tuple[dict, str]:
        from qwen_vl_utils import process_vision_info

        pictures = [{"type": "image", "image": image.convert("RGB"), "resized_width": width, "resized_height": height}
                    for image, (width, height) in zip(images, sizes, strict=True)]
        messages = [{"role": role, "content": [*(pictures if index == 0 else []), {"type": "text", "text": text}]}
                    for index, (role, text) in enumerate(turns)]
        text = self._processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        vision, _ = process_vision_info(messages, image_patch_size=self.unit // 2)
        inputs = self._processor(text=[text], images=vision, do_resize=False, return_tensors="pt")
        return inputs.to(self._model.device), text

    def parse(self, raw: str, task: str, input_size: Size, page_size: Size) -> Parsed:
        if task != "layout":
            return super().parse(raw, task, input_size, page_size)
        blocks = parse_qwen_grounding(raw, "relative1000", input_size, page_size)
        if not blocks:
            text = strip_special_tokens(raw).strip()
            return Parsed(text=text, markdown=text, warnings=[NO_BOXES])
        text = blocks_to_text(blocks)
        return Parsed(text=text, markdown=text, blocks=blocks)


ADAPTER = QwenVLAdapter
