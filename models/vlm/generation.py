"""Per-model generation settings: device, dtype, attention, quantization, greedy decoding, token caps,
the loop guard and streaming.

Imports torch/transformers only inside functions: adapters import this module for their Options.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

DtypeName = Literal["auto", "bfloat16", "float16", "float32"]
AttentionName = Literal["sdpa", "flash_attention_2", "eager"]
QuantizationName = Literal["int8", "nf4"]
# Sampling-only knobs a checkpoint's generation_config may set; with do_sample=False transformers
# warns about each one that is still set, so they are unset explicitly.
SAMPLING_ONLY = ("temperature", "top_p", "top_k", "min_p", "typical_p", "epsilon_cutoff", "eta_cutoff")
# flash-attn 2.x ships kernels for Ampere, Ada and Hopper only: none for sm_100/sm_120 (RTX 50xx),
# where the first call fails with "no kernel image" (Dao-AILab/flash-attention#1638).
FLASH_ATTN_CAPABILITIES = ((8, 0), (9, 0))
# What a run of "fill" is made of: the leaders and rules dots.ocr's README names as its loops, and blanks.
FILL_CHARACTERS = frozenset(" \t\r\n._-=~*·•…‥—–─")
# Where a loop's output may be cut cleanly, best first: a line end (also "\\n" inside a JSON string), the
# end of a closing tag, element or list, any other tag end.
CLEAN_ENDS = (re.compile(r"\n|\\n"), re.compile(r"</\w+>|[}\]]"), re.compile(r"[>)]"))


class LoopGuardOptions(BaseModel):
    """Stop generation once its tail is a loop: one unit of at most `max_period` tokens repeated.

    Two rules on the generated token ids:
    - fill: a unit made only of fill characters (dots, underscores, dashes, blanks) repeated over
      `fill_span` tokens. One Qwen token holds up to 64 dots, so that is thousands of characters.
    - any unit repeated `min_repeats` times over max(`min_span`, `span_fraction` x the token cap)
      tokens. Pages repeat rows legitimately (an empty table, rows of zeros, identical lines), so
      this waits longer the more tokens the request may use: a real loop runs to the cap anyway,
      and stopping it at a fifth of the cap still saves most of the time.
    When the guard fires, everything generated so far is kept, cut back to the last line, tag or
    element end inside the repeating unit.
    """

    model_config = ConfigDict(extra="forbid")
    enabled: bool = True
    max_period: int = Field(256, ge=1, le=1024)
    min_repeats: int = Field(4, ge=2)
    min_span: int = Field(1024, ge=2)
    span_fraction: float = Field(0.2, ge=0, le=1)
    fill_span: int = Field(256, ge=2)


class VLMOptions(BaseModel):
    """What every transformers VLM adapter accepts in its `options:` block."""

    model_config = ConfigDict(extra="forbid")
    max_new_tokens: dict[str, int] = Field(
        default_factory=lambda: {"text": 2048, "markdown": 4096, "layout": 4096, "prompt": 1024},
        description="token cap per task; RunOptions.max_new_tokens overrides it")
    repetition_penalty: float | None = Field(None, gt=0, description="None keeps the checkpoint's value")
    dtype: DtypeName | None = Field(None, description="overrides profile.dtype for this model")
    attention: AttentionName = "sdpa"
    quantization: QuantizationName | None = Field(None, description="bitsandbytes weights on CUDA: int8 or nf4")
    loop_guard: LoopGuardOptions = Field(default_factory=LoopGuardOptions)

    @model_validator(mode="after")
    def _check(self):
        bad = {task: cap for task, cap in self.max_new_tokens.items() if cap < 1}
        if bad:
            raise ValueError(f"max_new_tokens must be >= 1, got {bad}")
        return self


# ---------------------------------------------------------------- device, dtype, attention, quantization


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


def cuda_capability() -> tuple[int, int] | None:
    import torch

    return tuple(torch.cuda.get_device_capability()) if torch.cuda.is_available() else None  # type: ignore[return-value]


def choose_dtype(requested: str, *, device: str, bf16_supported: bool,
                 allow_float16: bool = True) -> tuple[str, list[str]]:
    """The dtype to load with, and why it differs from the request when it does.

    CPU: always float32 (half precision there is slow or unsupported). GPU: bfloat16 where the card
    supports it; float16 otherwise unless the model forbids it (Qwen2 language models give inf/nan
    in fp16).
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
    """True only for a real flash-attn install (a stand-in module in sys.modules does not count)."""
    try:
        importlib.metadata.distribution("flash-attn")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def choose_attention(requested: str, device: str, capability: tuple[int, int] | None) -> tuple[str, list[str]]:
    """flash_attention_2 only on a CUDA GPU flash-attn has kernels for; sdpa (with a warning) otherwise."""
    if requested != "flash_attention_2":
        return requested, []
    low, high = FLASH_ATTN_CAPABILITIES
    if device != "cuda":
        why = "it needs a CUDA GPU"
    elif not flash_attn_installed():
        why = "flash-attn is not installed"
    elif capability is None or not low <= tuple(capability) <= high:
        shown = f"{capability[0]}.{capability[1]}" if capability else "unknown"
        why = f"flash-attn 2 has no kernels for compute capability {shown}; it supports 8.0-9.0"
    else:
        return requested, []
    return "sdpa", [f"attention flash_attention_2 unavailable ({why}): using sdpa"]


def quantization_problem(quantization: str | None, device: str) -> str | None:
    """Why quantized loading cannot run here, or None when it can (or is not asked for)."""
    if quantization is None:
        return None
    if device != "cuda":
        return (f"quantization {quantization} needs a CUDA GPU (bitsandbytes); this profile runs on the CPU: "
                "set quantization: null for this model")
    if importlib.util.find_spec("bitsandbytes") is None:
        return f"quantization {quantization} needs bitsandbytes: pip install bitsandbytes"
    return None


def quantization_config(quantization: str, compute_dtype: str, keep: Sequence[str]):
    """transformers' BitsAndBytesConfig: 8-bit LLM.int8(), or 4-bit NF4 computing in compute_dtype.
    `keep` names the modules left unquantized (the vision tower, the output head)."""
    import torch
    from transformers import BitsAndBytesConfig

    if quantization == "int8":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=list(keep))
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=getattr(torch, compute_dtype), llm_int8_skip_modules=list(keep))


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
    kwargs: dict[str, Any] = {"do_sample": False, "num_beams": 1, "max_new_tokens": max_new_tokens}
    kwargs.update(dict.fromkeys(SAMPLING_ONLY))
    if repetition_penalty is not None:
        kwargs["repetition_penalty"] = repetition_penalty
    return kwargs


# ---------------------------------------------------------------- loop guard


def _values(seq: Sequence | str) -> np.ndarray:
    if isinstance(seq, str):  # one code point per element
        return np.frombuffer(seq.encode("utf-32-le"), dtype=np.uint32)
    return np.asarray(seq)


def find_repeating_tail(seq: Sequence | str, max_period: int, min_repeats: int,
                        min_span: int) -> tuple[int, int] | None:
    """(period, start) when seq ends in a unit repeated per the thresholds, else None.

    A unit of `period` elements qualifies when the last max(period x min_repeats, min_span)
    elements (rounded up to whole units) repeat it. The smallest qualifying period wins; `start`
    is where the run of repeats begins (extended back over partial units). Works on token ids and
    on strings alike.
    """
    values = _values(seq)
    n = len(values)
    for period in range(1, min(max_period, n // min_repeats) + 1):
        if values[n - 1] != values[n - 1 - period]:  # cheap first test: most periods fail here
            continue
        need = math.ceil(max(period * min_repeats, min_span) / period) * period
        if need > n or not np.array_equal(values[n - need + period:], values[n - need:n - period]):
            continue
        start = n - need
        breaks = np.flatnonzero(values[:start] != values[period:start + period])
        return period, int(breaks[-1]) + 1 if breaks.size else 0
    return None


def general_span(settings: LoopGuardOptions, max_new_tokens: int | None) -> int:
    """Tokens of repetition the general rule waits for: min_span, or a fraction of the cap when larger."""
    scaled = int(settings.span_fraction * max_new_tokens) if max_new_tokens else 0
    return max(settings.min_span, scaled)


def is_fill(text: str) -> bool:
    return bool(text) and set(text) <= FILL_CHARACTERS


def find_loop(ids: Sequence[int], settings: LoopGuardOptions, span: int,
              decode: Callable[[list[int]], str] | None = None) -> tuple[int, int] | None:
    """(period, start) of the loop the guard's rules see at the end of ids, else None. The fill rule
    needs `decode` to see what the unit is made of."""
    if decode is not None:
        found = find_repeating_tail(ids, settings.max_period, 2, settings.fill_span)
        if found is not None and is_fill(decode([int(i) for i in ids[len(ids) - found[0]:]])):
            return found
    return find_repeating_tail(ids, settings.max_period, settings.min_repeats, span)


def cut_at_unit_boundary(text: str, unit_text: str) -> str | None:
    """text ends in repeats of a unit that reads about unit_text: text cut after the last clean end (see
    CLEAN_ENDS) in the final unit; None when the unit has none. Cut by characters,
    since tokens often straddle a boundary ("</tr><tr>" is "</", "tr", "><", "tr", ">")."""
    tail_start = max(0, len(text) - len(unit_text))
    tail = text[tail_start:]
    for pattern in CLEAN_ENDS:
        ends = [match.end() for match in pattern.finditer(tail)]
        if ends:
            return text[:tail_start + ends[-1]]
    return None


def loop_window(settings: LoopGuardOptions, span: int) -> int:
    """Tokens of tail the guard needs to judge every period up to max_period."""
    return max(settings.max_period * settings.min_repeats, span, settings.fill_span) + settings.max_period


def make_loop_guard(prompt_length: int, settings: LoopGuardOptions, max_new_tokens: int | None = None,
                    decode: Callable[[list[int]], str] | None = None):
    """A transformers StoppingCriteria that ends generation once the tail is a loop (see LoopGuardOptions).
    Without `decode` only the general rule applies."""
    import torch
    from transformers import StoppingCriteria

    span = general_span(settings, max_new_tokens)
    earliest = max(span, 2 * settings.min_repeats)  # fewer tokens cannot hold a loop either rule sees
    if decode is not None:
        earliest = min(earliest, settings.fill_span)
    window = loop_window(settings, span)

    class LoopGuard(StoppingCriteria):
        def __init__(self):
            self.prompt_length = prompt_length
            self.span = span
            self.period: int | None = None  # set when the guard fired

        def __call__(self, input_ids, scores, **kwargs):
            generated = input_ids.shape[1] - self.prompt_length
            stop = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
            if generated < earliest:
                return stop
            # Only the tail is copied to the host: the check stays O(window) per step.
            tail = input_ids[0, -min(generated, window):].cpu().numpy()
            found = find_loop(tail, settings, span, decode)
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
    tokens: int  # generated tokens, the end-of-sequence token included
    truncated: bool = False
    warnings: list[str] = field(default_factory=list)


def eos_ids(model) -> set[int]:
    eos = getattr(model.generation_config, "eos_token_id", None)
    if eos is None:
        return set()
    return {eos} if isinstance(eos, int) else set(eos)


def generate_text(model, tokenizer, inputs: dict, *, max_new_tokens: int, repetition_penalty: float | None,
                  loop_guard: LoopGuardOptions, on_token: Callable[[str], None] | None = None,
                  skip_special_tokens: bool = True) -> Generated:
    """Greedy generation with the loop guard; marks truncation (loop or token cap) with a warning.

    skip_special_tokens=False keeps markup such as Qwen2-VL's grounding tokens in the text (the
    end-of-sequence token is dropped either way)."""
    import torch
    from transformers import StoppingCriteriaList

    def decode(ids: list[int]) -> str:
        return tokenizer.decode(ids, skip_special_tokens=False)

    prompt_length = inputs["input_ids"].shape[1]
    guard = make_loop_guard(prompt_length, loop_guard, max_new_tokens, decode) if loop_guard.enabled else None
    kwargs = greedy_kwargs(max_new_tokens, repetition_penalty)
    if guard is not None:
        kwargs["stopping_criteria"] = StoppingCriteriaList([guard])
    if on_token is not None:
        kwargs["streamer"] = make_streamer(tokenizer, on_token)
    with torch.inference_mode():
        output = model.generate(**inputs, **kwargs)
    ids = output[0, prompt_length:].tolist()
    tokens = len(ids)
    eos = eos_ids(model)
    if ids and ids[-1] in eos:
        ids = ids[:-1]
    text, truncated, warnings = settle_output(
        ids, tokens=tokens, loop_period=guard.period if guard is not None else None,
        hit_cap=tokens >= max_new_tokens and (not ids or ids[-1] not in eos), max_new_tokens=max_new_tokens,
        settings=loop_guard, span=guard.span if guard is not None else 0, find_decode=decode,
        text_decode=lambda part: tokenizer.decode(part, skip_special_tokens=skip_special_tokens))
    return Generated(text=text, tokens=tokens, truncated=truncated, warnings=warnings)


def settle_output(ids: list[int], *, tokens: int, loop_period: int | None, hit_cap: bool, max_new_tokens: int,
                  settings: LoopGuardOptions, span: int, find_decode: Callable[[list[int]], str],
                  text_decode: Callable[[list[int]], str]) -> tuple[str, bool, list[str]]:
    """The text of generated ids (end-of-sequence dropped), whether it is incomplete, and why: after
    the loop guard stopped it (loop_period set) the loop is found again and the text ends where a
    line, tag or element of its last unit ends; at the token cap it is kept whole. Shared by
    in-process generation and models on a server (models/vlm/served.py), where streamed pieces
    stand for tokens. `find_decode` is what the loop rules read, `text_decode` the output's text."""
    text = text_decode(ids)
    warnings: list[str] = []
    if loop_period is not None:
        found = find_loop(ids, settings, span, find_decode)
        if found is not None:  # keep it all, but end where a line, tag or element of the last unit ends
            period, start = found
            unit_text = text_decode(ids[len(ids) - period:])
            whole_copies = ids[:start + (len(ids) - start) // period * period]
            text = cut_at_unit_boundary(text, unit_text) or text_decode(whole_copies)
        warnings.append(f"generation stopped: the output kept repeating a {loop_period}-token unit "
                        f"(a loop); kept what was generated up to the stop ({tokens} tokens)")
    elif hit_cap:
        warnings.append(f"generation stopped at the token cap ({max_new_tokens} new tokens); "
                        "the output is incomplete")
    return text.strip(), bool(warnings), warnings
