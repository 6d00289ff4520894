"""dots.ocr adapter on a tiny remote-code checkpoint that reproduces each known loading breakage.

Every fix is shown twice: the unfixed path fails the way the published snapshot does, and the
adapter loads and runs through exactly the code that loads real weights.
"""
from __future__ import annotations

import sys
import types

import pytest
import torch

from models import dots_ocr
from models.dots_ocr import ADAPTER, PROMPT_MODES
from models.registry import Profile
from tests.conftest_vlm import CPU, RunOptions, fake_generate, page, spec, tiny_models  # noqa: F401
from utils.config import CPU_FALLBACK_CONFIG, DEFAULT_CONFIG, load_settings


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


def test_fix2_flash_attn_import(tiny_models, links):  # noqa: F811
    from transformers import AutoModelForCausalLM

    assert "flash_attn" not in sys.modules
    link = dots_ocr.period_free_dir(tiny_models["dots_ocr"], str(links))
    forget_remote_modules()
    with pytest.raises(ImportError, match="flash_attn"):
        AutoModelForCausalLM.from_pretrained(link, trust_remote_code=True)

    adapter = make(tiny_models, links)
    attention = adapter._model.vision_tower.blocks[0].attn
    assert type(attention).__name__ == "VisionFlashAttention2"  # the varlen path of fix 7
    assert sys.modules[type(attention).__module__].flash_attn_varlen_func is dots_ocr.varlen_attention
    assert adapter._model.config._attn_implementation == "sdpa"  # the language model
    assert "flash_attn" not in sys.modules  # the stand-in lived only while loading
    assert adapter.run(page(), "text", RunOptions(max_new_tokens=2)).tokens == 2


def test_flash_attn_stand_in_provides_only_varlen_attention():
    stand_in = dots_ocr._flash_attn_stand_in()
    assert stand_in.flash_attn_varlen_func is dots_ocr.varlen_attention
    with pytest.raises(RuntimeError, match="not installed"):
        stand_in.anything_else()


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


# ---------------------------------------------------------------- fix 5: prepare_inputs_for_generation


def test_fix5_prepare_inputs_is_replaced(tiny_models, links, monkeypatch):  # noqa: F811
    """Finding 5: the published method indexes cache_position[0], which transformers 5 does not pass."""
    monkeypatch.setattr(dots_ocr, "replace_prepare_inputs", lambda model: None)
    unfixed = make(tiny_models, links)
    with pytest.raises(TypeError, match="not subscriptable"):
        unfixed.run(page(), "text", RunOptions(max_new_tokens=4))
    monkeypatch.undo()

    adapter = make(tiny_models, links)
    calls = []
    tower = adapter._model.vision_tower
    tower.register_forward_hook(lambda module, args, output: calls.append(output.shape[0]))
    result = adapter.run(page(), "text", RunOptions(max_new_tokens=6))
    assert result.tokens == 6 and len(calls) == 1


# ---------------------------------------------------------------- vision memory: no N x N mask


def test_fix7_vision_attention_builds_no_mask(adapter, monkeypatch):
    """Finding 7: the published sdpa path builds a (1, N, N) mask on every layer; one image needs none."""
    import torch.nn.functional as F

    calls = []
    original = F.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, *args, **kwargs):
        calls.append((tuple(q.shape), None if attn_mask is None else tuple(attn_mask.shape)))
        return original(q, k, v, attn_mask, *args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    tower = adapter._model.vision_tower
    grid = torch.tensor([[1, 8, 6]])
    pixels = torch.rand(48, 3 * 14 * 14)
    out = tower(pixels, grid)
    assert calls and all(mask is None and len(shape) == 4 for shape, mask in calls), calls

    # The same numbers as the published masked attention on the same weights.
    calls.clear()
    sdpa = sys.modules[type(tower.blocks[0].attn).__module__].VisionSdpaAttention
    for block in tower.blocks:
        monkeypatch.setattr(block.attn, "forward", types.MethodType(sdpa.forward, block.attn))
    assert torch.allclose(tower(pixels, grid), out, atol=1e-5)
    assert calls[0][1] == (1, 48, 48)  # what the published path allocates per layer: N x N


def test_varlen_attention_keeps_images_apart():
    q, k, v = (torch.randn(10, 2, 8) for _ in range(3))
    cu = torch.tensor([0, 4, 10], dtype=torch.int32)
    mask = torch.zeros(10, 10, dtype=torch.bool)
    mask[:4, :4] = mask[4:, 4:] = True
    expected = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), mask).transpose(0, 1)
    assert torch.allclose(dots_ocr.varlen_attention(q, k, v, cu, cu, 6, 6), expected, atol=1e-6)


# ---------------------------------------------------------------- dtype and token caps


@pytest.mark.parametrize("bf16, expected", [(True, "bfloat16"), (False, "float32")])
def test_fp16_is_refused(tiny_models, bf16, expected):  # noqa: F811
    """Finding 9: dots.ocr's language model is Qwen2, which gives inf/nan in fp16."""
    unloaded = ADAPTER("dots_ocr", spec("dots_ocr", tiny_models["dots_ocr"]), Profile(device="cuda", dtype="float16"))
    plan = unloaded.plan("cuda", bf16_supported=bf16, capability=(8, 9))
    assert plan.dtype == expected and "float16 is unsafe" in plan.warnings[0]


# A 2-3B model decodes at least this fast with transformers on any GPU the app supports (assumption;
# benchmarks/gpu_check.py measures it): the deadline must leave room for the whole token cap.
MIN_TOKENS_PER_SECOND = 25


def test_gpu_token_caps_follow_dots_own_code_and_fit_the_deadline():
    """Finding 10: dots.ocr's own code allows 24,000 new tokens; 8192 truncated dense pages."""
    gpu, cpu = load_settings(DEFAULT_CONFIG), load_settings(DEFAULT_CONFIG, CPU_FALLBACK_CONFIG)
    caps = gpu.models["dots_ocr"].options["max_new_tokens"]
    assert caps["layout"] == caps["markdown"] == 24000
    assert dots_ocr.DotsOCROptions().max_new_tokens["layout"] == 24000
    assert cpu.models["dots_ocr"].options["max_new_tokens"]["layout"] == 3072  # the CPU keeps its caps
    for name in ("qwen_vl_2b", "qwen3_vl_2b", "dots_ocr"):
        model = gpu.models[name]
        deadline = model.timeout_s or gpu.guard.request_timeout_s
        assert deadline >= max(model.options["max_new_tokens"].values()) / MIN_TOKENS_PER_SECOND, name


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
    """Finding 6: dots.ocr's own framing, whatever chat template the snapshot ships (the fixture's is
    string-only and raises TypeError on image + text content)."""
    tokenizer = adapter._tokenizer
    modes = {"text": "prompt_ocr", "layout": "prompt_layout_all_en", "markdown": "prompt_layout_all_en"}
    for task, mode in modes.items():
        assert adapter.prompt_for(task, RunOptions()) == PROMPT_MODES[mode]
        inputs, (width, height) = adapter.prepare(page(), PROMPT_MODES[mode], RunOptions())
        t, h, w = inputs["image_grid_thw"][0].tolist()
        tokens = t * h * w // 4
        assert (w * 14, h * 14) == (width, height) and tokens <= 48
        text = tokenizer.decode(inputs["input_ids"][0])
        assert text == ("<|user|><|img|>" + "<|imgpad|>" * tokens + "<|endofimg|>" + PROMPT_MODES[mode]
                        + "<|endofuser|><|assistant|>")
    inputs, _ = adapter.prepare(page(), PROMPT_MODES["prompt_ocr"], RunOptions(max_pixels=8 * 784))
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
    width, height = adapter.input_size((600, 400), RunOptions())
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
@pytest.mark.parametrize("dtype, loaded", [("bfloat16", "bfloat16"), ("float16", "bfloat16"), ("float32", "float32")])
def test_on_gpu_in_every_dtype(tiny_models, links, dtype, loaded):  # noqa: F811
    adapter = make(tiny_models, links, profile=Profile(device="cuda", dtype=dtype))
    result = adapter.run(page(), "text", RunOptions(max_new_tokens=6))
    assert (result.device, result.dtype, result.tokens) == ("cuda", loaded, 6)  # never fp16 (finding 9)
    assert next(adapter._model.vision_tower.parameters()).dtype == getattr(torch, loaded)
    adapter.close()
