"""Generation policy: dtype, attention, greedy kwargs, token caps, streaming and the loop guard."""
from __future__ import annotations

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
    assert og.choose_attention("sdpa", "cuda") == ("sdpa", [])
    impl, notes = og.choose_attention("flash_attention_2", "cpu")
    assert impl == "sdpa" and "CUDA" in notes[0]
    monkeypatch.setattr(og, "flash_attn_installed", lambda: False)
    impl, notes = og.choose_attention("flash_attention_2", "cuda")
    assert impl == "sdpa" and "not installed" in notes[0]
    monkeypatch.setattr(og, "flash_attn_installed", lambda: True)
    assert og.choose_attention("flash_attention_2", "cuda") == ("flash_attention_2", [])


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


def test_trim_repetition_keeps_one_copy_and_spares_normal_text():
    looped = "Итого 1 250\n" + "| a | b |\n" * 40
    assert og.trim_repetition(looped) == ("Итого 1 250\n| a | b |", True)
    toc = "Chapter 1 " + "." * 60 + " 5\nChapter 2 " + "." * 60 + " 9"
    assert og.trim_repetition(toc) == (toc, False)


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

    settings = LoopGuardOptions(max_period=8, min_repeats=6, min_span=24)
    guarded = og.generate_text(model, tokenizer, inputs, max_new_tokens=cap, repetition_penalty=1.0,
                               loop_guard=settings)
    assert guarded.tokens < cap // 3, guarded.tokens
    print(f"loop guard: stopped after {guarded.tokens} tokens; unguarded ran to the cap of {cap}")
    assert guarded.truncated and "repeated" in guarded.warnings[0]
    # Same greedy stream: the guarded text is the unguarded one cut after the first copy of the unit.
    assert free.text.startswith(guarded.text)
    assert len(guarded.text) < len(free.text)
    assert og.find_repeating_tail(guarded.text, 40, settings.min_repeats, 12) is None


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
