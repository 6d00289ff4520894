"""Qwen2-VL and Qwen3-VL through transformers Auto classes and qwen-vl-utils.

One adapter for the family: the entries differ in options (family, pixel budget, caps), not code.
Pixel budgets are in the model's own unit: 28 px for Qwen2-VL (patch 14, merge 2), 32 px for
Qwen3-VL (patch 16). The page is resized to multiples of the unit inside [min_pixels, max_pixels]
(qwen-vl-utils does the resize to the size computed here) and the processor is told not to resize
again, so the budget in options, or in RunOptions.max_pixels lowered by the guard after an
OOM, is exactly what the model sees. Sides shorter than one unit are upscaled to one unit
(qwen-vl-utils' own smart_resize can round a thin side down to 0 px); an aspect ratio above 200:1
is rejected with a ValueError before it reaches the model.
"""
from __future__ import annotations

import gc
import json
import math
import time
from typing import Literal

from PIL import Image
from pydantic import Field, model_validator

from models.base import ModelAdapter
from models.contract import Availability, RunOptions, TokenCallback
from models.registry import ModelSpec
from models.vlm import weights
from models.vlm.generation import (
    VLMOptions,
    choose_attention,
    choose_dtype,
    cuda_bf16_supported,
    generate_text,
    pick_device,
    token_cap,
)

UNIT = {"qwen2_vl": 28, "qwen3_vl": 32}
MAX_ASPECT = 200  # qwen-vl-utils' smart_resize refuses more
MIN_UNITS, MAX_UNITS = 4, 16384  # the range qwen-vl-utils keeps an explicitly sized image in
TEXT_PROMPT = "Please output only the text content from the image without any additional descriptions or formatting."
SPOTTING_PROMPT = "Spotting all the text in the image with line-level, and output in JSON format."
PROMPTS = {
    "qwen2_vl": {
        "text": TEXT_PROMPT,
        "markdown": ("Convert the document in this image to Markdown: keep headings, lists and tables "
                     "(as Markdown tables) and the reading order. Output only the Markdown."),
        "layout": SPOTTING_PROMPT,
    },
    "qwen3_vl": {"text": TEXT_PROMPT, "markdown": "qwenvl markdown", "layout": SPOTTING_PROMPT},
}
# Qwen2-VL spots in the resized input's pixels, Qwen3-VL on a 0..1000 grid.
COORD_MODE = {"qwen2_vl": "pixels", "qwen3_vl": "relative1000"}


class QwenVLOptions(VLMOptions):
    family: Literal["qwen2_vl", "qwen3_vl"]
    min_pixels: int | None = Field(None, description="default 512 units^2")
    max_pixels: int | None = Field(None, description="default 2048 units^2")
    coord_mode: Literal["pixels", "relative1000"] | None = Field(None, description="default by family")
    prompts: dict[str, str] = Field(default_factory=dict, description="per-task prompt overrides")

    @model_validator(mode="after")
    def _fill(self):
        unit = UNIT[self.family]
        self.min_pixels = self.min_pixels or 512 * unit * unit
        self.max_pixels = self.max_pixels or 2048 * unit * unit
        self.coord_mode = self.coord_mode or COORD_MODE[self.family]
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
    unit = UNIT[options.family]
    max_pixels = min(max(run.max_pixels or options.max_pixels, MIN_UNITS * unit * unit), MAX_UNITS * unit * unit)
    return min(options.min_pixels, max_pixels), max_pixels


def fit_to_budget(width: int, height: int, unit: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """(width, height) in whole units, aspect kept, area within the budget, no side below one unit."""
    ratio = max(width, height) / max(1, min(width, height))
    if ratio > MAX_ASPECT:
        raise ValueError(f"image {width}x{height} has aspect ratio {ratio:.0f}:1; the Qwen-VL image "
                         f"pipeline accepts at most {MAX_ASPECT}:1 — crop or split the page")
    area = width * height
    if area > max_pixels:
        scale, snap = math.sqrt(max_pixels / area), math.floor
    elif area < min_pixels:
        scale, snap = math.sqrt(min_pixels / area), math.ceil
    else:
        scale, snap = 1.0, round
    w = max(unit, snap(width * scale / unit) * unit)
    h = max(unit, snap(height * scale / unit) * unit)
    while w * h > max_pixels and max(w, h) > unit:  # the one-unit floor can overshoot the cap
        if w >= h:
            w -= unit
        else:
            h -= unit
    return w, h


class QwenVLAdapter(ModelAdapter):
    Options = QwenVLOptions
    supported_tasks = ("text", "markdown", "layout", "prompt")

    @classmethod
    def availability(cls, spec: ModelSpec) -> Availability:
        return weights.availability(spec, packages=("torch", "transformers", "qwen_vl_utils", "torchvision"))

    @property
    def unit(self) -> int:
        return UNIT[self.options.family]

    def load(self) -> None:
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        path = weights.model_dir(self.spec)
        model_type = json.loads((path / "config.json").read_text()).get("model_type")
        if model_type != self.options.family:  # checked before gigabytes are loaded
            raise ValueError(f"options.family is {self.options.family} but {path} holds a {model_type} checkpoint")
        self.device = pick_device(self.profile.device)
        if self.device == "cpu" and self.profile.threads:
            torch.set_num_threads(self.profile.threads)
        self.dtype, dtype_notes = choose_dtype(self.options.dtype or self.profile.dtype, device=self.device,
                                               bf16_supported=cuda_bf16_supported(),
                                               allow_float16=self.options.family != "qwen2_vl")
        attention, attention_notes = choose_attention(self.options.attention, self.device)
        self.load_warnings = dtype_notes + attention_notes
        self._processor = AutoProcessor.from_pretrained(path, local_files_only=True)
        self._model = AutoModelForImageTextToText.from_pretrained(
            path, dtype=getattr(torch, self.dtype), attn_implementation=attention, local_files_only=True,
            device_map=self.device if self.device == "cuda" else None).eval()

    def prompt_for(self, task: str, run: RunOptions) -> str:
        if task == "prompt":
            if not run.prompt or not run.prompt.strip():
                raise ValueError("task 'prompt' needs RunOptions.prompt")
            return run.prompt
        return self.options.prompts.get(task) or PROMPTS[self.options.family][task]

    def prepare(self, image: Image.Image, prompt: str, run: RunOptions):
        """Model inputs and the (width, height) of the resized image the model sees."""
        from qwen_vl_utils import process_vision_info

        width, height = fit_to_budget(image.width, image.height, self.unit, *pixel_budget(self.options, run))
        messages = [{"role": "user", "content": [
            {"type": "image", "image": image.convert("RGB"), "resized_width": width, "resized_height": height},
            {"type": "text", "text": prompt},
        ]}]
        text = self._processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        images, _ = process_vision_info(messages, image_patch_size=self.unit // 2)
        inputs = self._processor(text=[text], images=images, do_resize=False, return_tensors="pt")
        return inputs.to(self._model.device), images[0].size

    def run(self, image: Image.Image, task: str, options: RunOptions,
            on_token: TokenCallback | None = None):
        from models.vlm.layout_parsing import blocks_to_text, parse_qwen_grounding

        if task not in self.supported_tasks:
            raise ValueError(f"{self.name} does not support task {task!r}")
        started = time.perf_counter()
        prompt = self.prompt_for(task, options)
        inputs, input_size = self.prepare(image, prompt, options)
        cap = token_cap(task, self.options.max_new_tokens, options.max_new_tokens)
        out = generate_text(self._model, self._processor.tokenizer, inputs, max_new_tokens=cap,
                            repetition_penalty=self.options.repetition_penalty,
                            loop_guard=self.options.loop_guard, on_token=on_token)
        warnings = list(self.load_warnings) + out.warnings
        text, markdown, blocks = out.text, out.text, []
        if task == "layout":
            blocks = parse_qwen_grounding(out.text, self.options.coord_mode, input_size, image.size)
            if blocks:
                text = markdown = blocks_to_text(blocks)
            else:
                warnings.append("no text lines with boxes could be parsed from the output; showing it as is")
        return self.result(task, text=text, markdown=markdown, blocks=blocks, tokens=out.tokens,
                           truncated=out.truncated, warnings=warnings, seconds=time.perf_counter() - started,
                           width=image.width, height=image.height)

    def close(self) -> None:
        self._model = self._processor = None
        gc.collect()
        if self.device == "cuda":
            import torch

            torch.cuda.empty_cache()


ADAPTER = QwenVLAdapter
