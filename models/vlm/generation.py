"""Per-model generation settings: device, dtype, attention, greedy decoding, token caps, loop guard.

Imports torch/transformers only inside functions: adapters import this module for their Options.
"""
from __future__ import annotations

import importlib.metadata
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

DtypeName = Literal["auto", "bfloat16", "float16", "float32"]
AttentionName = Literal["sdpa", "flash_attention_2", "eager"]
# Sampling-only knobs a checkpoint's generation_config may set; with do_sample=False transformers
# warns about each one that is still set, so they are unset explicitly.
SAMPLING_ONLY = ("temperature", "top_p", "top_k", "min_p", "typical_p", "epsilon_cutoff", "eta_cutoff")


class LoopGuardOptions(BaseModel):
    """Stop when the generated tail is one unit of `period` tokens repeated over and over.

    A tail counts as a loop when a unit of at most `max_period` tokens repeats at least
    `min_repeats` times in a row AND the repeats cover at least `min_span` tokens. Real loops run
    to the token cap, so generous thresholds cost little and spare legitimate repetition
    (dotted leaders, empty table cells).
    """

    model_config = ConfigDict(extra="forbid")
    enabled: bool = True
    max_period: int = Field(64, ge=1, le=1024)
    min_repeats: int = Field(12, ge=2)
    min_span: int = Field(200, ge=2)


class VLMOptions(BaseModel):
    """What every transformers VLM adapter accepts in its `options:` block."""

    model_config = ConfigDict(extra="forbid")
    max_new_tokens: dict[str, int] = Field(
        default_factory=lambda: {"text": 2048, "markdown": 4096, "layout": 4096, "prompt": 1024},
        description="token cap per task; RunOptions.max_new_tokens overrides it")
    repetition_penalty: float | None = Field(None, gt=0, description="None keeps the checkpoint's value")
    dtype: DtypeName | None = Field(None, description="overrides profile.dtype for this model")
    attention: AttentionName = "sdpa"
    loop_guard: LoopGuardOptions = Field(default_factory=LoopGuardOptions)

    @model_validator(mode="after")
    def _check(self):
        bad = {task: cap for task, cap in self.max_new_tokens.items() if cap < 1}
        if bad:
            raise ValueError(f"max_new_tokens must be >= 1, got {bad}")
        return self


# ---------------------------------------------------------------- device, dtype, attention


def pick_device(requested: str) -> str:
    import torch

    if requested == "cpu":
        return "cpu"
    if torch.cuda.is_available():
        return "cuda"
    if requested == "cuda":
        raise RuntimeError("profile.device is 'cuda' but torch sees no CUDA GPU")
    return "cpu"


def cuda_bf16_supported() -> bool:
    import torch

    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def choose_dtype(requested: str, *, device: str, bf16_supported: bool,
                 allow_float16: bool = True) -> tuple[str, list[str]]:
    """The dtype to load with, and why it differs from the request when it does.

    CPU: always float32 (half precision there is slow or unsupported). GPU: bfloat16 where the card
    supports it; float16 otherwise unless the model forbids it (Qwen2-VL gives inf/nan in fp16).
    """
    warnings: list[str] = []
    if device != "cuda":
        if requested not in ("auto", "float32"):
            warnings.append(f"dtype {requested} ignored on CPU: using float32")
        return "float32", warnings
    if requested == "float32":
        return "float32", warnings
    fallback = "bfloat16" if bf16_supported else ("float16" if allow_float16 else "float32")
    if requested == "auto":
        return fallback, warnings
    if requested == "bfloat16" and not bf16_supported:
        warnings.append(f"this GPU has no bfloat16: using {fallback}")
        return fallback, warnings
    if requested == "float16" and not allow_float16:
        warnings.append(f"float16 is unsafe for this model (inf/nan output): using {fallback}")
        return fallback, warnings
    return requested, warnings


def flash_attn_installed() -> bool:
    """True only for a real flash-attn install (a stub module in sys.modules does not count)."""
    try:
        importlib.metadata.distribution("flash-attn")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def choose_attention(requested: str, device: str) -> tuple[str, list[str]]:
    if requested == "flash_attention_2" and not (device == "cuda" and flash_attn_installed()):
        why = "flash-attn is not installed" if device == "cuda" else "it needs a CUDA GPU"
        return "sdpa", [f"attention flash_attention_2 unavailable ({why}): using sdpa"]
    return requested, []


# ---------------------------------------------------------------- decoding settings


def token_cap(task: str, caps: dict[str, int], override: int | None, default: int = 1024) -> int:
    """RunOptions.max_new_tokens wins (the guard lowers it on retries), then the task's cap."""
    if override is not None:
        return override
    return caps.get(task, default)


def greedy_kwargs(max_new_tokens: int, repetition_penalty: float | None = None) -> dict:
    """Keyword arguments for model.generate: deterministic decoding, whatever the checkpoint says.

    do_sample=False is always explicit (Qwen3-VL's checkpoint samples by default) and the sampling
    knobs are unset so transformers does not warn that they are ignored.
    """
    kwargs = {"do_sample": False, "num_beams": 1, "max_new_tokens": max_new_tokens}
    kwargs.update(dict.fromkeys(SAMPLING_ONLY))
    if repetition_penalty is not None:
        kwargs["repetition_penalty"] = repetition_penalty
    return kwargs


# ---------------------------------------------------------------- loop guard


def find_repeating_tail(seq: Sequence, max_period: int, min_repeats: int,
                        min_span: int) -> tuple[int, int] | None:
    """(period, start) when seq ends in a unit repeated per the thresholds, else None.

    The smallest qualifying period wins; `start` is where the run of repeats begins (extended
    back over partial units), so seq[:start + period] keeps exactly one copy. Works on token ids
    and on strings alike.
    """
    n = len(seq)
    for period in range(1, min(max_period, n // min_repeats) + 1):
        need = math.ceil(max(period * min_repeats, min_span) / period) * period
        if need > n:
            continue
        if seq[n - need + period:] != seq[n - need:n - period]:
            continue
        start = n - need
        while start > 0 and seq[start - 1] == seq[start - 1 + period]:
            start -= 1
        return period, start
    return None


def trim_repetition(text: str, min_repeats: int = 12, max_period: int = 400,
                    min_span: int = 200) -> tuple[str, bool]:
    """Text with a repeating tail cut down to one copy of the unit, and whether it was cut."""
    found = find_repeating_tail(text, max_period, min_repeats, min_span)
    if found is None:
        return text, False
    period, start = found
    return text[:start + period], True


def _window(settings: LoopGuardOptions) -> int:
    """Tokens of tail the guard needs to see to judge every period up to max_period."""
    return max(settings.max_period * settings.min_repeats, settings.min_span + settings.max_period)


def make_loop_guard(prompt_length: int, settings: LoopGuardOptions):
    """A transformers StoppingCriteria that ends generation once the tail is a loop."""
    import torch
    from transformers import StoppingCriteria

    class LoopGuard(StoppingCriteria):
        def __init__(self):
            self.prompt_length = prompt_length
            self.period: int | None = None  # set when the guard fired

        def __call__(self, input_ids, scores, **kwargs):
            generated = input_ids.shape[1] - self.prompt_length
            stop = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
            if generated < max(settings.min_span, 2 * settings.min_repeats):
                return stop
            # Only the tail is copied to Python: the check stays O(window) per step.
            tail = input_ids[0, -min(generated, _window(settings)):].tolist()
            found = find_repeating_tail(tail, settings.max_period, settings.min_repeats, settings.min_span)
            if found is not None:
                self.period = found[0]
                stop[:] = True
            return stop

    return LoopGuard()


# ---------------------------------------------------------------- streaming and the generation call


def make_streamer(tokenizer, on_token: Callable[[str], None]):
    """A transformers streamer that hands each finished piece of text to on_token (no thread)."""
    from transformers import TextStreamer

    class CallbackStreamer(TextStreamer):
        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            if text:
                on_token(text)

    return CallbackStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)


@dataclass
class Generated:
    text: str
    tokens: int  # generated tokens, before any trimming
    truncated: bool = False
    warnings: list[str] = field(default_factory=list)


def _eos_ids(model) -> set[int]:
    eos = getattr(model.generation_config, "eos_token_id", None)
    if eos is None:
        return set()
    return {eos} if isinstance(eos, int) else set(eos)


def generate_text(model, tokenizer, inputs: dict, *, max_new_tokens: int, repetition_penalty: float | None,
                  loop_guard: LoopGuardOptions, on_token: Callable[[str], None] | None = None) -> Generated:
    """Greedy generation with the loop guard; marks truncation (loop or token cap) with a warning."""
    import torch
    from transformers import StoppingCriteriaList

    prompt_length = inputs["input_ids"].shape[1]
    guard = make_loop_guard(prompt_length, loop_guard) if loop_guard.enabled else None
    kwargs = greedy_kwargs(max_new_tokens, repetition_penalty)
    if guard is not None:
        kwargs["stopping_criteria"] = StoppingCriteriaList([guard])
    if on_token is not None:
        kwargs["streamer"] = make_streamer(tokenizer, on_token)
    with torch.inference_mode():
        output = model.generate(**inputs, **kwargs)
    ids = output[0, prompt_length:].tolist()
    tokens = len(ids)
    result = Generated(text="", tokens=tokens)
    if guard is not None and guard.period is not None:
        found = find_repeating_tail(ids, loop_guard.max_period, loop_guard.min_repeats, loop_guard.min_span)
        if found is not None:
            ids = ids[:found[1] + found[0]]
        result.truncated = True
        result.warnings.append(f"generation stopped: the output repeated a {guard.period}-token unit "
                               f"(kept one copy of it; {tokens} tokens generated)")
    elif tokens >= max_new_tokens and (not ids or ids[-1] not in _eos_ids(model)):
        result.truncated = True
        result.warnings.append(f"generation stopped at the token cap ({max_new_tokens} new tokens); "
                               "the output is incomplete")
    text = tokenizer.decode(ids, skip_special_tokens=True)
    if result.truncated and (guard is None or guard.period is None):
        text, cut = trim_repetition(text, loop_guard.min_repeats)
        if cut:
            result.warnings.append("removed a repeated tail from the output (kept one copy)")
    result.text = text.strip()
    return result
