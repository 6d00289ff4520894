"""rednote-hilab/dots.ocr: layout + text of a page in one pass, through its own remote code.

The remote code is trusted for this entry only, and only from a local snapshot directory (the HF
cache snapshot or local_path), never fetched. It was written for transformers 4.51; each fix below
is applied here and tested in tests/test_dots_ocr.py:

1. a snapshot directory named with a period (`dots.ocr`) becomes the dynamic module's package
   name, and the period breaks the import: the snapshot is exposed under a period-free link;
2. modeling_dots_vision.py imports flash_attn unconditionally: while loading, a stand-in module
   provides `flash_attn_varlen_func` when flash-attn is not installed (see 7);
3. the vision forward casts pixels to bfloat16 (`bf16=True`), which fails against fp32 (CPU)
   weights: the loaded tower's forward is wrapped to cast pixels to the tower's own dtype;
4. configuration_dots.py calls `AutoProcessor.register` with a string key, which some
   transformers 5 releases reject: string keys are skipped while loading (the processor is built
   here from the snapshot's tokenizer and image-processor config instead);
5. its prepare_inputs_for_generation indexes `cache_position[0]`, which transformers 5 no longer
   passes to remote code whose forward does not take it (TypeError before generation starts): the
   method is replaced by the base Qwen2 preparation, with pixels on the step that holds the image
   tokens only;
6. the prompt is framed as dots.ocr's own vLLM demo and ms-swift's template frame it,
   `<|user|><|img|><|imgpad|><|endofimg|>{prompt}<|endofuser|><|assistant|>`, never through the
   snapshot's chat template (a string-only template fails on list content);
7. vision memory: the published sdpa attention builds a dense N x N boolean mask on every layer
   (N = pixels / 196 patches): 57,600 patches at the 11.29 MP cap is 3.3 GB of mask, and a boolean
   mask keeps SDPA off its flash kernel, so the bias it builds from it (bf16) adds 6.6 GB more;
   an A4 page at 200 dpi (19,740 patches) is 0.4 + 0.8 GB. Instead the tower runs its flash-attn
   path, whose `flash_attn_varlen_func` is real flash-attn where it has kernels, else
   `varlen_attention` below: SDPA per image without any mask (q, k, v of one image at the cap:
   3 x 57,600 x 1536 x 2 bytes = 0.53 GB, nothing N x N);
8. fp16 is refused: the language model is Qwen2 (bf16-trained, inf/nan in fp16).
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib.machinery
import importlib.util
import inspect
import re
import sys
import types
from pathlib import Path
from typing import Literal

from PIL import Image
from pydantic import Field, model_validator

from models.contract import RunOptions
from models.vlm.base import LoadPlan, Parsed, Size, VLMAdapter, fit_to_budget
from models.vlm.generation import VLMOptions
from models.vlm.layout_parsing import blocks_to_text, dots_blocks_to_markdown, parse_dots_layout, strip_special_tokens

# The official prompt modes (dots_ocr/utils/prompts.py), verbatim.
PROMPT_MODES = {
    'prompt_layout_all_en': (
        "Please output the layout information from the PDF image, including each layout element's bbox, its "
        'category, and the corresponding text content within the bbox.\n\n1. Bbox format: [x1, y1, x2, y2]\n\n2. '
        "Layout Categories: The possible categories are ['Caption', 'Footnote', 'Formula', 'List-item', "
        "'Page-footer', 'Page-header', 'Picture', 'Section-header', 'Table', 'Text', 'Title'].\n\n3. Text "
        "Extraction & Formatting Rules:\n    - Picture: For the 'Picture' category, the text field should be "
        'omitted.\n    - Formula: Format its text as LaTeX.\n    - Table: Format its text as HTML.\n    - All '
        'Others (Text, Title, etc.): Format their text as Markdown.\n\n4. Constraints:\n    - The output text '
        'must be the original text from the image, with no translation.\n    - All layout elements must be '
        'sorted according to human reading order.\n\n5. Final Output: The entire output must be a single JSON '
        'object.\n'
    ),
    'prompt_layout_only_en': (
        "Please output the layout information from this PDF image, including each layout's bbox and its "
        'category. The bbox should be in the format [x1, y1, x2, y2]. The layout categories for the PDF '
        "document include ['Caption', 'Footnote', 'Formula', 'List-item', 'Page-footer', 'Page-header', "
        "'Picture', 'Section-header', 'Table', 'Text', 'Title']. Do not output the corresponding text. The "
        'layout result should be in JSON format.'
    ),
    'prompt_ocr': (
        'Extract the text content from this image.'
    ),
    'prompt_grounding_ocr': (
        'Extract text from the given bounding box on the image (format: [x1, y1, x2, y2]).\nBounding Box:\n'
    ),
}
TASK_MODES = {"text": "prompt_ocr", "layout": "prompt_layout_all_en", "markdown": "prompt_layout_all_en"}
UNIT = 28  # patch 14, merge 2
IMAGE_TOKEN = "<|imgpad|>"
FRAMING = "<|user|><|img|>{image}<|endofimg|>{prompt}<|endofuser|><|assistant|>"
# A free prompt that is just a box "[x1, y1, x2, y2]" (page pixels) asks for the text inside it.
_NUMBER = r"\s*(\d+(?:\.\d+)?)\s*"
BOX_PROMPT = re.compile(rf"^\s*\[{_NUMBER},{_NUMBER},{_NUMBER},{_NUMBER}\]\s*$")


class DotsOCROptions(VLMOptions):
    min_pixels: int = Field(3136, ge=4 * UNIT * UNIT)
    max_pixels: int = Field(11_289_600, ge=4 * UNIT * UNIT)
    # dots.ocr's own transformers demo allows 24,000 new tokens: a dense page of layout JSON needs them.
    max_new_tokens: dict[str, int] = Field(
        default_factory=lambda: {"text": 4096, "markdown": 24000, "layout": 24000, "prompt": 2048})
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


def varlen_attention(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q=None, max_seqlen_k=None,
                     dropout_p=0.0, softmax_scale=None, causal=False, **unused):
    """flash_attn_varlen_func's contract on torch SDPA (fix 7): q, k, v are (total, heads, dim) with the
    sequences packed one after another at cu_seqlens; each attends only to itself. No mask is built,
    so SDPA can use its flash or memory-efficient kernel: memory grows with N, not N^2."""
    import torch
    import torch.nn.functional as F

    if not torch.equal(cu_seqlens_q, cu_seqlens_k):
        raise ValueError("varlen_attention: only self-attention (the same sequences for q and k) is supported")
    bounds = cu_seqlens_q.tolist()
    outputs = []
    for begin, end in zip(bounds, bounds[1:]):
        # (1, heads, length, dim): the 4-D layout SDPA's fused kernels take
        q_i, k_i, v_i = (t[begin:end].transpose(0, 1).unsqueeze(0) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q_i, k_i, v_i, dropout_p=dropout_p, is_causal=causal,
                                             scale=softmax_scale)
        outputs.append(out.squeeze(0).transpose(0, 1))
    return outputs[0] if len(outputs) == 1 else torch.cat(outputs)


def _flash_attn_stand_in() -> types.ModuleType:
    def unavailable(*args, **kwargs):
        raise RuntimeError("flash-attn is not installed; only flash_attn_varlen_func is provided (on SDPA)")

    module = types.ModuleType("flash_attn")
    module.__spec__ = importlib.machinery.ModuleSpec("flash_attn", loader=None)
    module.__path__ = []
    module.__getattr__ = lambda name: unavailable  # type: ignore[method-assign]  # any other `from flash_attn import X`
    setattr(module, "flash_attn_varlen_func", varlen_attention)  # noqa: B010 (a module built here)
    return module


@contextlib.contextmanager
def remote_code_guards():
    """Fixes 2 and 4 for the time the remote code is imported; nothing stays behind."""
    from transformers import AutoProcessor

    stand_in = "flash_attn" not in sys.modules and importlib.util.find_spec("flash_attn") is None
    if stand_in:
        sys.modules["flash_attn"] = _flash_attn_stand_in()
    original_register = AutoProcessor.register

    def register(config_class, processor_class, exist_ok=False):
        if isinstance(config_class, str):
            return  # a string is not a config class; this adapter builds its processor itself
        return original_register(config_class, processor_class, exist_ok=exist_ok)

    AutoProcessor.register = staticmethod(register)  # type: ignore[method-assign]
    try:
        yield
    finally:
        AutoProcessor.register = staticmethod(original_register)  # type: ignore[method-assign]
        if stand_in:
            sys.modules.pop("flash_attn", None)


def attend_without_mask(tower) -> None:
    """Fix 7 for a loaded tower on its flash-attn path: its module calls varlen_attention, whatever
    flash_attn it imported."""
    modules = {inspect.getmodule(type(block.attn)) for block in tower.blocks}
    for module in modules:
        if module is not None and hasattr(module, "flash_attn_varlen_func"):
            setattr(module, "flash_attn_varlen_func", varlen_attention)  # noqa: B010 (the remote module)


def cast_pixels_to_tower_dtype(tower) -> None:
    """Fix 3: the tower's forward gets pixels in its own dtype and never casts to bfloat16."""
    original = tower.forward
    takes_bf16 = "bf16" in inspect.signature(original).parameters

    def forward(hidden_states, grid_thw, *args, **kwargs):
        dtype = next(tower.parameters()).dtype
        if takes_bf16:
            kwargs["bf16"] = False
        return original(hidden_states.to(dtype), grid_thw, *args, **kwargs)

    tower.forward = forward  # the instance's, not the class's


def replace_prepare_inputs(model) -> None:
    """Fix 5: the base Qwen2 input preparation; pixels go only with the step whose input ids hold the
    image tokens (the prefill; every step when the cache is off)."""
    library = next(cls for cls in type(model).__mro__  # the first implementation that is not remote code
                   if "prepare_inputs_for_generation" in vars(cls) and cls.__module__.startswith("transformers."))
    base = vars(library)["prepare_inputs_for_generation"].__get__(model)
    image_token_id = model.config.image_token_id

    def prepare_inputs_for_generation(input_ids, *args, pixel_values=None, image_grid_thw=None, **kwargs):
        inputs = base(input_ids, *args, **kwargs)
        ids = inputs.get("input_ids")
        if pixel_values is not None and ids is not None and bool((ids == image_token_id).any()):
            inputs["pixel_values"], inputs["image_grid_thw"] = pixel_values, image_grid_thw
        return inputs

    model.prepare_inputs_for_generation = prepare_inputs_for_generation


# ---------------------------------------------------------------- adapter


class DotsOCRAdapter(VLMAdapter[DotsOCROptions]):
    Options = DotsOCROptions
    packages = ("torch", "transformers", "torchvision")
    keep_unquantized = ("vision_tower", "lm_head")

    def float16_allowed(self) -> bool:
        return False  # fix 8

    def load_model(self, path: Path, plan: LoadPlan) -> None:
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, Qwen2VLImageProcessor

        if not path.is_dir():  # trust_remote_code only for a local directory
            raise FileNotFoundError(f"{path} is not a local snapshot directory")
        path = period_free_dir(path, self.options.link_dir)
        with remote_code_guards():
            config = AutoConfig.from_pretrained(path, trust_remote_code=True, local_files_only=True)
            vision = config.vision_config
            if isinstance(vision, dict):
                vision["attn_implementation"] = "flash_attention_2"
            else:
                vision.attn_implementation = "flash_attention_2"  # fix 7: the varlen path, never a mask
            self._model = AutoModelForCausalLM.from_pretrained(
                path, config=config, trust_remote_code=True, **self.from_pretrained_kwargs(plan)).eval()
            # AutoTokenizer reads config.json too, which names the remote config class.
            self._tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=True, local_files_only=True)
        tower = self._model.vision_tower
        if plan.attention != "flash_attention_2":  # no usable flash-attn here
            attend_without_mask(tower)
        cast_pixels_to_tower_dtype(tower)
        replace_prepare_inputs(self._model)
        self._processor = Qwen2VLImageProcessor.from_pretrained(path, local_files_only=True)
        image_token_id = self._tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        if image_token_id != self._model.config.image_token_id:
            raise ValueError(f"tokenizer's {IMAGE_TOKEN} is {image_token_id}, the model expects "
                             f"{self._model.config.image_token_id}")

    def input_size(self, page_size: Size, run: RunOptions) -> Size:
        max_pixels = max(run.max_pixels or self.options.max_pixels, 4 * UNIT * UNIT)
        return fit_to_budget(*page_size, UNIT, min(self.options.min_pixels, max_pixels), max_pixels)

    def pixel_range(self) -> tuple[int, int]:
        return self.options.min_pixels, self.options.max_pixels

    def task_prompt(self, task: str) -> str:
        mode = self.options.layout_prompt if task == "layout" else TASK_MODES[task]
        return PROMPT_MODES[mode]

    def free_prompt(self, prompt: str, input_size: Size, page_size: Size) -> str:
        """A prompt that is just a box in page pixels asks for the text inside it (prompt_grounding_ocr,
        the box in input pixels)."""
        box = BOX_PROMPT.match(prompt)
        if box is None:
            return prompt
        sx, sy = input_size[0] / page_size[0], input_size[1] / page_size[1]
        x1, y1, x2, y2 = (float(v) for v in box.groups())
        coords = [round(x1 * sx), round(y1 * sy), round(x2 * sx), round(y2 * sy)]
        return PROMPT_MODES["prompt_grounding_ocr"] + str(coords)

    def encode(self, image: Image.Image, prompt: str, input_size: Size) -> dict:
        resized = image.convert("RGB").resize(input_size, Image.Resampling.BICUBIC)
        vision = self._processor(images=[resized], do_resize=False, return_tensors="pt")
        merge = self._processor.merge_size
        count = int(vision["image_grid_thw"][0].prod()) // (merge * merge)
        encoded = self._tokenizer([FRAMING.format(image=IMAGE_TOKEN * count, prompt=prompt)], return_tensors="pt")
        inputs = {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"],
                  "pixel_values": vision["pixel_values"], "image_grid_thw": vision["image_grid_thw"]}
        device = self._model.device
        return {k: v.to(device) for k, v in inputs.items()}

    def served_messages(self, image_url: str, prompt: str) -> list[dict]:
        """On a vLLM server the text starts with the image markers, as in dots.ocr's own vLLM client:
        without them vLLM's chat template puts a line break between image and prompt."""
        return super().served_messages(image_url, f"<|img|>{IMAGE_TOKEN}<|endofimg|>{prompt}")

    def parse(self, raw: str, task: str, input_size: Size, page_size: Size) -> Parsed:
        if task not in ("layout", "markdown"):
            return super().parse(raw, task, input_size, page_size)
        blocks, warnings = parse_dots_layout(strip_special_tokens(raw), input_size, page_size)
        if not blocks:
            text = strip_special_tokens(raw).strip()
            return Parsed(text=text, markdown=text, warnings=warnings)
        markdown = dots_blocks_to_markdown(blocks, self.options.include_headers_footers)
        return Parsed(text=blocks_to_text(blocks), markdown=markdown, blocks=blocks, warnings=warnings)


ADAPTER = DotsOCRAdapter
