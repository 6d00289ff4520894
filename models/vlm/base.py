"""What every transformers VLM adapter shares: load, prepare inputs, generate, decode, parse.

A subclass says only what differs for its model: how the weights load (`load_model`), the input
size its pixel budget gives a page (`input_size`), the prompt for a task (`task_prompt`, and
`free_prompt` for a user's own), the tensors for a page and a prompt (`encode`) and how its raw
output becomes text and blocks (`parse`). The steps between are here, once:

    input size -> prompt -> encode -> generate (greedy, loop guard, streaming) -> decode -> parse

The raw output (decoded with special tokens kept, since some models write their boxes with them)
goes into PageResult.raw, and `reparse` turns a saved raw output into the same result again
without loading the model, so a parser fix can be applied to results already kept.
"""
from __future__ import annotations

import gc
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from PIL import Image

from models.base import ModelAdapter
from models.contract import CHAT, Availability, Block, PageResult, RunOptions, TokenCallback
from models.registry import ModelSpec, Profile
from models.vlm import weights
from models.vlm.generation import (
    VLMOptions,
    choose_attention,
    choose_dtype,
    cuda_bf16_supported,
    cuda_capability,
    generate_text,
    pick_device,
    quantization_config,
    quantization_problem,
    token_cap,
)
from models.vlm.layout_parsing import strip_special_tokens
from models.vlm.served import ServedVLM

VLMOptionsT = TypeVar("VLMOptionsT", bound=VLMOptions)
Size = tuple[int, int]
VLM_TASKS = ("text", "markdown", "layout", "prompt")
MAX_ASPECT = 200  # qwen-vl-utils' smart_resize refuses more
CONTEXT_INTRO = "The recognised text of the document's other pages:"


def fit_to_budget(width: int, height: int, unit: int, min_pixels: int, max_pixels: int) -> Size:
    """(width, height) in whole units, aspect kept, area within the budget, no side below one unit.

    Inside the budget each side is rounded to the nearest unit, as the models' own smart_resize
    does; a page over (under) the budget is scaled down (up) first. Sides shorter than one unit
    become one unit (qwen-vl-utils' smart_resize can round a thin side down to 0 px); an aspect
    ratio above 200:1 is refused before it reaches the model."""
    ratio = max(width, height) / max(1, min(width, height))
    if ratio > MAX_ASPECT:
        raise ValueError(f"image {width}x{height} has aspect ratio {ratio:.0f}:1; the vision models "
                         f"accept at most {MAX_ASPECT}:1 — crop or split the page")
    area = width * height
    snap: Callable[[float], int]
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


def chat_turns(options: RunOptions) -> list[tuple[str, str]]:
    """The conversation as (role, text) turns ending with the new question; the recognised text of the
    pages not sent as images goes before the first question."""
    turns = [*options.history, ("user", options.prompt or "")]
    if turns[0][0] != "user":
        raise ValueError("a chat's history must start with the user's turn")
    if options.context and options.context.strip():
        turns[0] = ("user", f"{CONTEXT_INTRO}\n{options.context.strip()}\n\n{turns[0][1]}")
    return turns


@dataclass(frozen=True)
class LoadPlan:
    """How the weights are loaded on this machine, and why that differs from what was asked."""

    device: str
    dtype: str
    attention: str
    quantization: str | None = None
    warnings: tuple[str, ...] = ()


@dataclass
class Parsed:
    """What a model's raw output says: text, markdown, blocks in page pixels, and parser warnings."""

    text: str
    markdown: str
    blocks: list[Block] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


class VLMAdapter(ModelAdapter[VLMOptionsT]):
    """Subclasses set Options (a VLMOptions), `packages`, and implement the per-model steps."""

    supported_tasks: ClassVar[tuple[str, ...]] = VLM_TASKS
    packages: ClassVar[tuple[str, ...]] = ("torch", "transformers")
    # Left unquantized under int8/nf4: the vision tower and the output head carry the accuracy.
    keep_unquantized: ClassVar[tuple[str, ...]] = ("lm_head",)

    def __init__(self, name: str, spec: ModelSpec, profile: Profile):
        super().__init__(name, spec, profile)
        self.load_warnings: list[str] = []
        self._model: Any = None
        self._tokenizer: Any = None
        self._processor: Any = None  # what turns a page into pixel values (and, for Qwen, the prompt)

    # ------------------------------------------------------------ the per-model steps

    def load_model(self, path: Path, plan: LoadPlan) -> None:
        """Load weights from `path` per `plan`; set self._model, self._tokenizer and self._processor."""
        raise NotImplementedError

    def float16_allowed(self) -> bool:
        """False for models whose language model is Qwen2: bf16-trained, inf/nan in fp16."""
        return True

    def input_size(self, page_size: Size, run: RunOptions) -> Size:
        """(width, height) the page is resized to for the model, from its pixel budget. No model needed."""
        raise NotImplementedError

    def pixel_range(self) -> tuple[int, int]:
        """(min_pixels, max_pixels) of one image as configured: a chat splits the max across its pages."""
        raise NotImplementedError

    def task_prompt(self, task: str) -> str:
        raise NotImplementedError

    def free_prompt(self, prompt: str, input_size: Size, page_size: Size) -> str:
        """A user's own prompt as the model gets it."""
        return prompt

    def encode(self, image: Image.Image, prompt: str, input_size: Size) -> dict:
        """Model inputs (on the model's device) for the page resized to input_size and the prompt."""
        raise NotImplementedError

    def served_messages(self, image_url: str, prompt: str) -> list[dict]:
        """The chat messages an OpenAI-compatible server gets for the page (a data URL, already at
        input_size) and the prompt: the image first, then the text, as in-process."""
        return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": image_url}},
                                             {"type": "text", "text": prompt}]}]

    def served_chat_messages(self, image_urls: Sequence[str], turns: Sequence[tuple[str, str]]) -> list[dict]:
        """A conversation as an OpenAI-compatible server gets it, laid out as encode_chat lays it out
        in-process: the images (data URLs, already at their sizes) open the first turn, the user's,
        before its text; the other turns are plain text."""
        first, *rest = turns
        opening = [*({"type": "image_url", "image_url": {"url": url}} for url in image_urls),
                   {"type": "text", "text": first[1]}]
        return [{"role": first[0], "content": opening}, *({"role": role, "content": text} for role, text in rest)]

    def encode_chat(self, images: Sequence[Image.Image], sizes: Sequence[Size],
                    turns: Sequence[tuple[str, str]]) -> tuple[dict, str]:
        """Model inputs and the prompt text for a conversation: the images (resized to `sizes`) go with
        the first turn, which is the user's; the last turn is the user's new question."""
        raise NotImplementedError

    def parse(self, raw: str, task: str, input_size: Size, page_size: Size) -> Parsed:
        """The default for tasks without boxes: the text as written, markup removed."""
        text = strip_special_tokens(raw).strip()
        return Parsed(text=text, markdown=text)

    # ------------------------------------------------------------ shared

    @classmethod
    def served(cls) -> type[ModelAdapter]:
        """This adapter with its model on an OpenAI-compatible server: its steps, the server's
        generation (models/vlm/served.py)."""
        return _served_variant(cls)

    @classmethod
    def availability(cls, spec: ModelSpec) -> Availability:
        extra = ("bitsandbytes",) if spec.options.get("quantization") else ()
        return weights.availability(spec, packages=cls.packages + extra)

    def plan(self, device: str, bf16_supported: bool, capability: tuple[int, int] | None) -> LoadPlan:
        """Dtype, attention and quantization for this device; raises ValueError when quantization
        was asked for where it cannot run."""
        problem = quantization_problem(self.options.quantization, device)
        if problem:
            raise ValueError(problem)
        dtype, dtype_notes = choose_dtype(self.options.dtype or self.profile.dtype, device=device,
                                          bf16_supported=bf16_supported, allow_float16=self.float16_allowed())
        attention, attention_notes = choose_attention(self.options.attention, device, capability)
        return LoadPlan(device, dtype, attention, self.options.quantization, tuple(dtype_notes + attention_notes))

    def from_pretrained_kwargs(self, plan: LoadPlan) -> dict[str, Any]:
        """What every from_pretrained call of a VLM gets: local files only, dtype, attention, placement."""
        import torch

        kwargs: dict[str, Any] = {"local_files_only": True, "dtype": getattr(torch, plan.dtype),
                                  "attn_implementation": plan.attention,
                                  "device_map": plan.device if plan.device == "cuda" else None}
        if plan.quantization:
            kwargs["quantization_config"] = quantization_config(plan.quantization, plan.dtype, self.keep_unquantized)
        return kwargs

    def load(self) -> None:
        import torch

        device = pick_device(self.profile.device)
        plan = self.plan(device, cuda_bf16_supported(), cuda_capability())  # refuses before gigabytes load
        if device == "cpu" and self.profile.threads:
            torch.set_num_threads(self.profile.threads)
        self.load_model(weights.model_dir(self.spec), plan)
        self.device, self.load_warnings = device, list(plan.warnings)
        self.dtype = plan.quantization or plan.dtype

    def prompt_for(self, task: str, run: RunOptions, input_size: Size | None = None,
                   page_size: Size | None = None) -> str:
        if task != "prompt":
            return self.task_prompt(task)
        if not run.prompt or not run.prompt.strip():
            raise ValueError("task 'prompt' needs RunOptions.prompt")
        if input_size is None or page_size is None:
            return run.prompt
        return self.free_prompt(run.prompt, input_size, page_size)

    def prepare(self, image: Image.Image, prompt: str, run: RunOptions) -> tuple[dict, Size]:
        """Model inputs for the page and the prompt, and the (width, height) the model sees."""
        size = self.input_size(image.size, run)
        return self.encode(image, prompt, size), size

    def _check_task(self, task: str) -> None:
        if task not in self.supported_tasks:
            raise ValueError(f"{self.name} does not support task {task!r}")

    def run(self, image: Image.Image, task: str, options: RunOptions,
            on_token: TokenCallback | None = None) -> PageResult:
        self._check_task(task)
        started = time.perf_counter()
        size = self.input_size(image.size, options)
        prompt = self.prompt_for(task, options, size, image.size)
        out = generate_text(self._model, self._tokenizer, self.encode(image, prompt, size),
                            max_new_tokens=token_cap(task, self.options.max_new_tokens, options.max_new_tokens),
                            repetition_penalty=self.options.repetition_penalty,
                            loop_guard=self.options.loop_guard, on_token=on_token, skip_special_tokens=False)
        parsed = self.parse(out.text, task, size, image.size)
        return self.result(task, text=parsed.text, markdown=parsed.markdown, blocks=parsed.blocks, raw=out.text,
                           tokens=out.tokens, truncated=out.truncated,
                           warnings=self.load_warnings + out.warnings + parsed.warnings,
                           seconds=time.perf_counter() - started, width=image.width, height=image.height)

    def chat(self, images: Sequence[Image.Image], options: RunOptions,
             on_token: TokenCallback | None = None) -> PageResult:
        """Answer options.prompt about `images`, after the turns in options.history; options.max_pixels
        is the budget of each image (the caller splits the model's budget across the pages)."""
        started = time.perf_counter()
        sizes, turns = self.chat_request(images, options)
        inputs, prompt = self.encode_chat(images, sizes, turns)
        out = generate_text(self._model, self._tokenizer, inputs,
                            max_new_tokens=token_cap(CHAT, self.options.max_new_tokens, options.max_new_tokens),
                            repetition_penalty=self.options.repetition_penalty,
                            loop_guard=self.options.loop_guard, on_token=on_token, skip_special_tokens=False)
        text = strip_special_tokens(out.text).strip()
        return self.result(CHAT, text=text, markdown=text, raw=out.text, prompt=prompt, images=sizes,
                           tokens=out.tokens, truncated=out.truncated, warnings=self.load_warnings + out.warnings,
                           seconds=time.perf_counter() - started)

    def chat_request(self, images: Sequence[Image.Image],
                     options: RunOptions) -> tuple[list[Size], list[tuple[str, str]]]:
        """A chat turn checked, in-process or on a server: each image's size for the model (its share
        of the budget, options.max_pixels) and the conversation's turns ending with the question."""
        self._check_task(CHAT)
        if not options.prompt or not options.prompt.strip():
            raise ValueError("a chat turn needs a question")
        if not images:
            raise ValueError("a chat needs at least one page image")
        return [self.input_size(image.size, options) for image in images], chat_turns(options)

    def reparse(self, raw: str, task: str, page_size: Size,
                run: RunOptions | None = None) -> tuple[PageResult, Size]:
        """The result `run` would have given for this raw output on a page of page_size, and the input
        size it assumed (from the pixel budget, as run computes it). Loads nothing."""
        self._check_task(task)
        size = self.input_size(page_size, run or RunOptions())
        parsed = self.parse(raw, task, size, page_size)
        result = self.result(task, text=parsed.text, markdown=parsed.markdown, blocks=parsed.blocks, raw=raw,
                             warnings=parsed.warnings, width=page_size[0], height=page_size[1])
        return result, size

    def close(self) -> None:
        self._model = self._tokenizer = self._processor = None
        gc.collect()
        if self.device == "cuda":
            import torch

            torch.cuda.empty_cache()


_served_variants: dict[type, type[ModelAdapter]] = {}


def _served_variant(cls: type[VLMAdapter]) -> type[ModelAdapter]:
    """One class per adapter, so the variant is the same object wherever it is asked for."""
    if cls not in _served_variants:
        _served_variants[cls] = type(f"Served{cls.__name__}", (ServedVLM, cls), {"__module__": cls.__module__})
    return _served_variants[cls]
