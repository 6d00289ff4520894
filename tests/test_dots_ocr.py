"""dots.ocr adapter on a tiny remote-code checkpoint that reproduces each known loading breakage.

Every fix is shown twice: the unfixed path fails the way the published snapshot does, and the
adapter loads and runs through exactly the code that loads real weights.
"""
from __future__ import annotations

import sys

import pytest
import torch

from models import dots_ocr
from models.dots_ocr import ADAPTER, PROMPT_MODES
from models.registry import Profile
from tests.conftest_vlm import CPU, RunOptions, fake_generate, page, spec, tiny_models  # noqa: F401


@pytest.fixture(scope="module")
def links(tmp_path_factory):
    return tmp_path_factory.mktemp("dots_links")


def make(tiny_models, links, profile=CPU, **options):  # noqa: F811
    options = {"max_pixels": 48 * 784, "link_dir": str(links), **options}
    adapter = ADAPTER("dots_ocr", spec("dots_ocr", tiny_models["dots_ocr"], **options), profile)
    adapter.load()
    return adapter


@pytest.fixture(scope="module")
def adapter(tiny_models, links):  # noqa: F811
    adapter = make(tiny_models, links)
    yield adapter
    adapter.close()


def forget_remote_modules():
    """Drop the imported remote code so the next load executes it again."""
    for name in [n for n in sys.modules if n.startswith("transformers_modules.")]:
        del sys.modules[name]


def test_the_fixture_keeps_the_period_in_its_directory_name(tiny_models):  # noqa: F811
    assert tiny_models["dots_ocr"].name == "dots.ocr"
    assert (tiny_models["dots_ocr"].parent / "dots_ocr").resolve() == tiny_models["dots_ocr"].resolve()


# ---------------------------------------------------------------- fix 1: period in the directory name


def test_fix1_period_in_directory_name(tiny_models, links, monkeypatch):  # noqa: F811
    from transformers import AutoModelForCausalLM, dynamic_module_utils

    # transformers releases before module-name sanitising used the directory name as is.
    monkeypatch.setattr(dynamic_module_utils, "_sanitize_module_name", lambda name: name)
    forget_remote_modules()
    with dots_ocr.remote_code_guards(), pytest.raises(ImportError, match="No module named 'transformers_modules.dots'"):
        AutoModelForCausalLM.from_pretrained(tiny_models["dots_ocr"], trust_remote_code=True)

    link = dots_ocr.period_free_dir(tiny_models["dots_ocr"], str(links))
    assert link.name == "DotsOCR" and link.resolve() == tiny_models["dots_ocr"].resolve()
    assert dots_ocr.period_free_dir(tiny_models["dots_ocr"], str(links)) == link  # reused, not relinked
    assert dots_ocr.period_free_dir(link, str(links)) == link  # a period-free name is used as is
    adapter = make(tiny_models, links)
    assert adapter.run(page(), "text", RunOptions(max_new_tokens=3)).tokens == 3
    assert any(n.startswith("transformers_modules.DotsOCR") for n in sys.modules)


# ---------------------------------------------------------------- fix 2: unconditional flash_attn import


def test_fix2_flash_attn_import_and_sdpa(tiny_models, links):  # noqa: F811
    from transformers import AutoModelForCausalLM

    assert "flash_attn" not in sys.modules
    link = dots_ocr.period_free_dir(tiny_models["dots_ocr"], str(links))
    forget_remote_modules()
    with pytest.raises(ImportError, match="flash_attn"):
        AutoModelForCausalLM.from_pretrained(link, trust_remote_code=True)

    adapter = make(tiny_models, links)
    attention = type(adapter._model.vision_tower.blocks[0].attn).__name__
    assert attention == "VisionSdpaAttention"
    assert adapter._model.config.vision_config.attn_implementation == "sdpa"
    assert "flash_attn" not in sys.modules  # the stand-in lived only while loading
    assert adapter.run(page(), "text", RunOptions(max_new_tokens=2)).tokens == 2


def test_flash_attn_stub_fails_loudly_if_called():
    stub = dots_ocr._flash_attn_stub()
    with pytest.raises(RuntimeError, match="sdpa"):
        stub.flash_attn_varlen_func()
    with pytest.raises(RuntimeError, match="sdpa"):
        stub.anything_else()


# ---------------------------------------------------------------- fix 3: bf16 cast in the vision forward


def test_fix3_vision_forward_follows_the_tower_dtype(adapter):
    tower = adapter._model.vision_tower
    grid = torch.tensor([[1, 4, 4]])
    pixels = torch.rand(16, 3 * 1 * 14 * 14)
    unpatched = type(tower).forward
    with pytest.raises(RuntimeError, match="BFloat16"):
        unpatched(tower, pixels, grid)  # fp32 weights on CPU: the published cast breaks the conv
    assert tower(pixels, grid).dtype == torch.float32
    tower.to(torch.bfloat16)
    try:
        assert tower(pixels, grid).dtype == torch.bfloat16  # fp32 pixels in, cast to the tower's dtype
    finally:
        tower.to(torch.float32)


# ---------------------------------------------------------------- fix 4: AutoProcessor.register("...")


def test_fix4_string_key_processor_registration(tiny_models, links, monkeypatch):  # noqa: F811
    from transformers import AutoConfig
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING

    def strict_register(key, value, exist_ok=False):  # transformers 5.13's behaviour
        if key.__module__.startswith("transformers."):
            return
        PROCESSOR_MAPPING._extra_content[key] = value

    monkeypatch.setattr(PROCESSOR_MAPPING, "register", strict_register)
    link = dots_ocr.period_free_dir(tiny_models["dots_ocr"], str(links))
    forget_remote_modules()
    with pytest.raises(AttributeError, match="'str' object has no attribute '__module__'"):
        AutoConfig.from_pretrained(link, trust_remote_code=True)
    adapter = make(tiny_models, links)
    assert adapter.run(page(), "text", RunOptions(max_new_tokens=2)).tokens == 2

    # Where register accepts the string, the adapter still leaves no string key behind.
    monkeypatch.undo()
    string_keys = {key for key in PROCESSOR_MAPPING._extra_content if isinstance(key, str)}
    forget_remote_modules()
    make(tiny_models, links)
    assert {key for key in PROCESSOR_MAPPING._extra_content if isinstance(key, str)} == string_keys


# ---------------------------------------------------------------- fix 5: pixel_values on every step


def test_fix5_pixels_go_to_the_vision_tower_once(tiny_models, links, monkeypatch):  # noqa: F811
    monkeypatch.setattr(dots_ocr, "pixels_only_on_prefill", lambda model: None)
    unfixed = make(tiny_models, links)
    with pytest.raises(AssertionError, match="img_mask"):
        unfixed.run(page(), "text", RunOptions(max_new_tokens=4))
    monkeypatch.undo()

    adapter = make(tiny_models, links)
    calls = []
    tower = adapter._model.vision_tower
    tower.register_forward_hook(lambda module, args, output: calls.append(output.shape[0]))
    result = adapter.run(page(), "text", RunOptions(max_new_tokens=6))
    assert result.tokens == 6 and len(calls) == 1


# ---------------------------------------------------------------- prompts, pixels, tasks


def test_official_prompt_texts():
    assert PROMPT_MODES["prompt_ocr"] == "Extract the text content from this image."
    assert PROMPT_MODES["prompt_layout_all_en"].startswith(
        "Please output the layout information from the PDF image, including each layout element's bbox, "
        "its category, and the corresponding text content within the bbox.\n\n1. Bbox format: [x1, y1, x2, y2]")
    assert PROMPT_MODES["prompt_layout_all_en"].endswith(
        "5. Final Output: The entire output must be a single JSON object.\n")
    assert "Do not output the corresponding text." in PROMPT_MODES["prompt_layout_only_en"]
    assert PROMPT_MODES["prompt_grounding_ocr"].endswith("(format: [x1, y1, x2, y2]).\nBounding Box:\n")


def test_chat_framing_prompts_and_visual_tokens(adapter):
    tokenizer = adapter._tokenizer
    modes = {"text": "prompt_ocr", "layout": "prompt_layout_all_en", "markdown": "prompt_layout_all_en"}
    for task, mode in modes.items():
        inputs, (width, height) = adapter.prepare(page(), task, RunOptions())
        t, h, w = inputs["image_grid_thw"][0].tolist()
        tokens = t * h * w // 4
        assert (w * 14, h * 14) == (width, height) and tokens <= 48
        text = tokenizer.decode(inputs["input_ids"][0])
        assert text == ("<|user|><|img|>" + "<|imgpad|>" * tokens + "<|endofimg|>" + PROMPT_MODES[mode]
                        + "<|endofuser|><|assistant|>")
    inputs, _ = adapter.prepare(page(), "text", RunOptions(max_pixels=8 * 784))
    assert int(inputs["image_grid_thw"][0].prod()) // 4 <= 8


def test_free_prompt_and_box_grounding(adapter):
    assert adapter.prompt_for("prompt", RunOptions(prompt="What is the total?"), (300, 200), (600, 400)) \
        == "What is the total?"
    grounding = adapter.prompt_for("prompt", RunOptions(prompt="[100, 50, 300, 150]"), (300, 200), (600, 400))
    assert grounding == PROMPT_MODES["prompt_grounding_ocr"] + "[50, 25, 150, 75]"  # page -> input pixels
    with pytest.raises(ValueError, match="RunOptions.prompt"):
        adapter.prompt_for("prompt", RunOptions(), (300, 200), (600, 400))


LAYOUT_REPLY = (
    '[{"bbox": [14, 14, 280, 42], "category": "Title", "text": "Счёт № 17"}, '
    '{"bbox": [14, 56, 280, 98], "category": "Table", "text": "<table><tr><td>Итого</td><td>1 250</td></tr></table>"}, '
    '{"bbox": [14, 170, 280, 182], "category": "Page-footer", "text": "page 1"}, '
    '{"bbox": [14, 112, 280, 126], "category": "Text", "text": "Paid in fu'
)


def test_layout_and_markdown_from_truncated_json(tiny_models, links):  # noqa: F811
    adapter = make(tiny_models, links, max_pixels=192 * 784)
    fake_generate(adapter._model, adapter._tokenizer, LAYOUT_REPLY)
    _, (width, height) = adapter.prepare(page(), "layout", RunOptions())
    sx, sy = 600 / width, 400 / height
    result = adapter.run(page(), "layout", RunOptions())
    assert [b.category for b in result.blocks] == ["Title", "Table", "Page-footer"]
    assert result.blocks[0].bbox == pytest.approx((14 * sx, 14 * sy, 280 * sx, 42 * sy), abs=0.01)
    assert any("truncated" in w for w in result.warnings)
    assert result.text.splitlines()[:2] == ["Счёт № 17", "Итого\t1 250"]

    markdown = adapter.run(page(), "markdown", RunOptions())
    assert markdown.markdown.startswith("# Счёт № 17\n\n| Итого | 1 250 |")
    assert "page 1" not in markdown.markdown  # headers/footers left out by default


def test_result_fields_and_streaming(tiny_models, links):  # noqa: F811
    adapter = make(tiny_models, links, loop_guard={"enabled": False})
    pieces: list[str] = []
    result = adapter.run(page(), "text", RunOptions(max_new_tokens=20), on_token=pieces.append)
    assert "".join(pieces).strip() == result.text
    assert (result.model, result.device, result.dtype, result.tokens) == ("dots_ocr", "cpu", "float32", 20)
    assert result.truncated


def test_never_downloads(tmp_path, monkeypatch):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path))
    model = spec("dots_ocr", None)
    model.hub_id, model.revision = "rednote-hilab/dots.ocr", "c0111ce6bc07803dbc267932ffef0ae3a51dc951"
    status = ADAPTER.availability(model)
    assert status.status == "not downloaded"
    assert status.fix == "hf download rednote-hilab/dots.ocr --revision c0111ce6bc07803dbc267932ffef0ae3a51dc951"
    with pytest.raises(FileNotFoundError, match="hf download"):
        ADAPTER("dots_ocr", model, CPU).load()


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
def test_on_gpu_in_every_dtype(tiny_models, links, dtype):  # noqa: F811
    adapter = make(tiny_models, links, profile=Profile(device="cuda", dtype=dtype))
    result = adapter.run(page(), "text", RunOptions(max_new_tokens=6))
    assert (result.device, result.dtype, result.tokens) == ("cuda", dtype, 6)
    assert next(adapter._model.vision_tower.parameters()).dtype == getattr(torch, dtype)
    adapter.close()
