"""rednote-hilab/dots.ocr: layout + text of a page in one pass, through its own remote code.

The remote code is trusted for this entry only, and only from a local snapshot directory (the HF
cache snapshot or local_path), never fetched. It was written for transformers 4.51; running it on
transformers 5 needs five fixes, each applied here and tested in tests/test_dots_ocr.py:

1. a snapshot directory named with a period (`dots.ocr`) becomes the dynamic module's package
   name, and the period breaks the import: the snapshot is exposed under a period-free link;
2. modeling_dots_vision.py imports flash_attn unconditionally: while loading, a stub module
   stands in when flash-attn is not installed, and the vision tower is configured for sdpa;
3. the vision forward casts pixels to bfloat16 (`bf16=True`), which fails against fp32 (CPU) or
   fp16 weights: the loaded tower's forward is wrapped to cast pixels to the tower's own dtype;
4. configuration_dots.py calls `AutoProcessor.register` with a string key, which some
   transformers 5 releases reject: string keys are skipped while loading (the processor is built
   here from the snapshot's tokenizer, image-processor config and chat template instead);
5. its prepare_inputs_for_generation keys "first step" on cache_position, which transformers 5
   no longer passes, so pixels would be re-encoded at every decode step and fail the image-token
   count check: pixel_values are dropped after the first step.
"""
from __future__ import annotations

import contextlib
import gc
import hashlib
import importlib.machinery
import importlib.util
import inspect
import json
import re
import sys
import time
import types
from pathlib import Path
from typing import Literal

from PIL import Image
from pydantic import Field, model_validator

from models.base import ModelAdapter
from models.contract import Availability, RunOptions, TokenCallback
from models.qwen_vl import fit_to_budget
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

# The official prompt modes (dots_ocr/utils/prompts.py).
PROMPT_MODES = {
    "prompt_layout_all_en": """Please output the layout information from the PDF image, including each layout element's bbox, its category, and the corresponding text content within the bbox.

1. Bbox format: [x1, y1, x2, y2]

2. Layout Categories: The possible categories are ['Caption', 'Footnote', 'Formula', 'List-item', 'Page-footer', 'Page-header', 'Picture', 'Section-header', 'Table', 'Text', 'Title'].

3. Text Extraction & Formatting Rules:
    - Picture: For the 'Picture' category, the text field should be omitted.
    - Formula: Format its text as LaTeX.
    - Table: Format its text as HTML.
    - All Others (Text, Title, etc.): Format their text as Markdown.

4. Constraints:
    - The output text must be the original text from the image, with no translation.
    - All layout elements must be sorted according to human reading order.

5. Final Output: The entire output must be a single JSON object.
""",
    "prompt_layout_only_en": """Please output the layout information from this PDF image, including each layout's bbox and its category. The bbox should be in the format [x1, y1, x2, y2]. The layout categories for the PDF document include ['Caption', 'Footnote', 'Formula', 'List-item', 'Page-footer', 'Page-header', 'Picture', 'Section-header', 'Table', 'Text', 'Title']. Do not output the corresponding text. The layout result should be in JSON format.""",
    "prompt_ocr": """Extract the text content from this image.""",
    "prompt_grounding_ocr": """Extract text from the given bounding box on the image (format: [x1, y1, x2, y2]).\nBounding Box:\n""",
}
TASK_MODES = {"text": "prompt_ocr", "layout": "prompt_layout_all_en", "markdown": "prompt_layout_all_en"}
UNIT = 28  # patch 14, merge 2
IMAGE_TOKEN = "<|imgpad|>"
FALLBACK_FRAMING = "<|user|><|img|><|imgpad|><|endofimg|>{prompt}<|endofuser|><|assistant|>"
# A free prompt that is just a box "[x1, y1, x2, y2]" (page pixels) asks for the text inside it.
_NUMBER = r"\s*(\d+(?:\.\d+)?)\s*"
BOX_PROMPT = re.compile(rf"^\s*\[{_NUMBER},{_NUMBER},{_NUMBER},{_NUMBER}\]\s*$")


class DotsOCROptions(VLMOptions):
    min_pixels: int = Field(3136, ge=4 * UNIT * UNIT)
    max_pixels: int = Field(11_289_600, ge=4 * UNIT * UNIT)
    max_new_tokens: dict[str, int] = Field(
        default_factory=lambda: {"text": 4096, "markdown": 8192, "layout": 8192, "prompt": 2048})
    layout_prompt: Literal["prompt_layout_all_en", "prompt_layout_only_en"] = "prompt_layout_all_en"
    include_headers_footers: bool = Field(False, description="keep Page-header/Page-footer in markdown")
    link_dir: str | None = Field(None, description="where a period-free link to the snapshot is made; "
                                                   "default ~/.cache/chatvlmllm/dots_links")

    @model_validator(mode="after")
    def _order(self):
        if self.min_pixels > self.max_pixels:
            raise ValueError(f"min_pixels {self.min_pixels} > max_pixels {self.max_pixels}")
        return self


# ---------------------------------------------------------------- the fixes


def period_free_dir(snapshot: Path, link_dir: str | None = None) -> Path:
    """Fix 1: the snapshot under a directory name without periods (a symlink when needed)."""
    if "." not in snapshot.name:
        return snapshot
    root = Path(link_dir).expanduser() if link_dir else Path.home() / ".cache" / "chatvlmllm" / "dots_links"
    target = snapshot.resolve()
    # One link per snapshot, so two snapshots never share a module package.
    link = root / hashlib.sha1(str(target).encode()).hexdigest()[:12] / "DotsOCR"
    if link.is_symlink() and link.resolve() == target:
        return link
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink():
        link.unlink()
    link.symlink_to(target, target_is_directory=True)
    return link


def _flash_attn_stub() -> types.ModuleType:
    def unavailable(*args, **kwargs):
        raise RuntimeError("flash-attn is not installed; dots.ocr must run with attention 'sdpa'")

    stub = types.ModuleType("flash_attn")
    stub.__spec__ = importlib.machinery.ModuleSpec("flash_attn", loader=None)
    stub.__path__ = []
    stub.__getattr__ = lambda name: unavailable  # any `from flash_attn import X`
    stub.flash_attn_varlen_func = unavailable
    return stub


@contextlib.contextmanager
def remote_code_guards():
    """Fixes 2 and 4 for the time the remote code is imported; nothing stays behind."""
    from transformers import AutoProcessor

    stub_added = "flash_attn" not in sys.modules and importlib.util.find_spec("flash_attn") is None
    if stub_added:
        sys.modules["flash_attn"] = _flash_attn_stub()
    original_register = AutoProcessor.register

    def register(config_class, processor_class, exist_ok=False):
        if isinstance(config_class, str):
            return  # a string is not a config class; this adapter builds its processor itself
        return original_register(config_class, processor_class, exist_ok=exist_ok)

    AutoProcessor.register = staticmethod(register)
    try:
        yield
    finally:
        AutoProcessor.register = staticmethod(original_register)
        if stub_added:
            sys.modules.pop("flash_attn", None)


def cast_pixels_to_tower_dtype(tower) -> None:
    """Fix 3: the tower's forward gets pixels in its own dtype and never casts to bfloat16."""
    original = tower.forward
    takes_bf16 = "bf16" in inspect.signature(original).parameters

    def forward(hidden_states, grid_thw, *args, **kwargs):
        dtype = next(tower.parameters()).dtype
        if takes_bf16:
            kwargs["bf16"] = False
        return original(hidden_states.to(dtype), grid_thw, *args, **kwargs)

    tower.forward = forward


def pixels_only_on_prefill(model) -> None:
    """Fix 5: the remote prepare_inputs_for_generation re-sends pixel_values on every step when the
    transformers version no longer passes cache_position; the vision features belong to the prompt
    only, so later steps drop them."""
    original = model.prepare_inputs_for_generation

    def prepare(input_ids, *args, **kwargs):
        inputs = original(input_ids, *args, **kwargs)
        first = kwargs.get("is_first_iteration")
        if first is None:  # transformers without is_first_iteration: a one-token step is a decode step
            ids = inputs.get("input_ids")
            first = ids is None or ids.shape[1] > 1
        if not first:
            inputs.pop("pixel_values", None)
        return inputs

    model.prepare_inputs_for_generation = prepare


# ---------------------------------------------------------------- adapter


def _chat_template(directory: Path, tokenizer) -> str | None:
    json_file = directory / "chat_template.json"
    if json_file.is_file():
        return json.loads(json_file.read_text()).get("chat_template")
    jinja_file = directory / "chat_template.jinja"
    if jinja_file.is_file():
        return jinja_file.read_text()
    return getattr(tokenizer, "chat_template", None)


class DotsOCRAdapter(ModelAdapter):
    Options = DotsOCROptions
    supported_tasks = ("text", "markdown", "layout", "prompt")

    @classmethod
    def availability(cls, spec: ModelSpec) -> Availability:
        return weights.availability(spec, packages=("torch", "transformers", "torchvision"))

    def load(self) -> None:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, Qwen2VLImageProcessor

        snapshot = weights.model_dir(self.spec)
        if not snapshot.is_dir():  # trust_remote_code only for a local directory
            raise FileNotFoundError(f"{snapshot} is not a local snapshot directory")
        path = period_free_dir(snapshot, self.options.link_dir)
        self.device = pick_device(self.profile.device)
        if self.device == "cpu" and self.profile.threads:
            torch.set_num_threads(self.profile.threads)
        self.dtype, dtype_notes = choose_dtype(self.options.dtype or self.profile.dtype, device=self.device,
                                               bf16_supported=cuda_bf16_supported())
        attention, attention_notes = choose_attention(self.options.attention, self.device)
        self.load_warnings = dtype_notes + attention_notes
        with remote_code_guards():
            config = AutoConfig.from_pretrained(path, trust_remote_code=True, local_files_only=True)
            vision = config.vision_config
            if isinstance(vision, dict):
                vision["attn_implementation"] = attention
            else:
                vision.attn_implementation = attention
            self._model = AutoModelForCausalLM.from_pretrained(
                path, config=config, trust_remote_code=True, local_files_only=True,
                dtype=getattr(torch, self.dtype), attn_implementation=attention,
                device_map=self.device if self.device == "cuda" else None).eval()
            # AutoTokenizer reads config.json too, which names the remote config class.
            self._tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=True, local_files_only=True)
        cast_pixels_to_tower_dtype(self._model.vision_tower)
        pixels_only_on_prefill(self._model)
        self._image_processor = Qwen2VLImageProcessor.from_pretrained(path, local_files_only=True)
        self._template = _chat_template(path, self._tokenizer)
        image_token_id = self._tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        if image_token_id != self._model.config.image_token_id:
            raise ValueError(f"tokenizer's {IMAGE_TOKEN} is {image_token_id}, the model expects "
                             f"{self._model.config.image_token_id}")

    def prompt_for(self, task: str, run: RunOptions, input_size, page_size) -> str:
        if task != "prompt":
            mode = self.options.layout_prompt if task == "layout" else TASK_MODES[task]
            return PROMPT_MODES[mode]
        if not run.prompt or not run.prompt.strip():
            raise ValueError("task 'prompt' needs RunOptions.prompt")
        box = BOX_PROMPT.match(run.prompt)
        if box is None:
            return run.prompt
        sx, sy = input_size[0] / page_size[0], input_size[1] / page_size[1]
        x1, y1, x2, y2 = (float(v) for v in box.groups())
        coords = [round(x1 * sx), round(y1 * sy), round(x2 * sx), round(y2 * sy)]
        return PROMPT_MODES["prompt_grounding_ocr"] + str(coords)

    def render_prompt(self, prompt: str) -> str:
        """The model's own chat template; its fixed framing when the template shows no image slot."""
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
        if self._template:
            text = self._tokenizer.apply_chat_template(messages, chat_template=self._template, tokenize=False,
                                                       add_generation_prompt=True)
            if text.count(IMAGE_TOKEN) == 1:
                return text
        return FALLBACK_FRAMING.format(prompt=prompt)

    def prepare(self, image: Image.Image, task: str, run: RunOptions):
        max_pixels = max(run.max_pixels or self.options.max_pixels, 4 * UNIT * UNIT)
        min_pixels = min(self.options.min_pixels, max_pixels)
        width, height = fit_to_budget(image.width, image.height, UNIT, min_pixels, max_pixels)
        resized = image.convert("RGB").resize((width, height), Image.BICUBIC)
        prompt = self.prompt_for(task, run, (width, height), image.size)
        vision = self._image_processor(images=[resized], do_resize=False, return_tensors="pt")
        merge = self._image_processor.merge_size
        count = int(vision["image_grid_thw"][0].prod()) // (merge * merge)
        text = self.render_prompt(prompt).replace(IMAGE_TOKEN, IMAGE_TOKEN * count)
        encoded = self._tokenizer([text], return_tensors="pt")
        inputs = {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"],
                  "pixel_values": vision["pixel_values"], "image_grid_thw": vision["image_grid_thw"]}
        device = self._model.device
        return {k: v.to(device) for k, v in inputs.items()}, (width, height)

    def run(self, image: Image.Image, task: str, options: RunOptions,
            on_token: TokenCallback | None = None):
        from models.vlm.layout_parsing import blocks_to_text, dots_blocks_to_markdown, parse_dots_layout

        if task not in self.supported_tasks:
            raise ValueError(f"{self.name} does not support task {task!r}")
        started = time.perf_counter()
        inputs, input_size = self.prepare(image, task, options)
        cap = token_cap(task, self.options.max_new_tokens, options.max_new_tokens)
        out = generate_text(self._model, self._tokenizer, inputs, max_new_tokens=cap,
                            repetition_penalty=self.options.repetition_penalty,
                            loop_guard=self.options.loop_guard, on_token=on_token)
        warnings = list(self.load_warnings) + out.warnings
        text, markdown, blocks = out.text, out.text, []
        if task in ("layout", "markdown"):
            blocks, repairs = parse_dots_layout(out.text, input_size, image.size)
            warnings += repairs
            if blocks:
                text = blocks_to_text(blocks)
                markdown = dots_blocks_to_markdown(blocks, self.options.include_headers_footers)
        return self.result(task, text=text, markdown=markdown, blocks=blocks, tokens=out.tokens,
                           truncated=out.truncated, warnings=warnings, seconds=time.perf_counter() - started,
                           width=image.width, height=image.height)

    def close(self) -> None:
        self._model = self._tokenizer = self._image_processor = None
        gc.collect()
        if self.device == "cuda":
            import torch

            torch.cuda.empty_cache()


ADAPTER = DotsOCRAdapter
