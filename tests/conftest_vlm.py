"""Shared by the VLM adapter tests: the tiny checkpoints (built once per session) and helpers.

Import the fixture into a test module with `from tests.conftest_vlm import tiny_models  # noqa: F401`.
"""
from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from models.contract import RunOptions
from models.registry import ModelSpec, Profile

_BUILT: dict[str, Path] = {}
CPU = Profile(name="test", device="cpu", dtype="auto", threads=1)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """{qwen_vl_2b, qwen3_vl_2b, dots_ocr} -> checkpoint directory; built once even when several
    modules import this fixture."""
    if not _BUILT:
        from tests.fixtures.tiny_models import build_all

        _BUILT.update(build_all(tmp_path_factory.mktemp("tiny_models")))
    return _BUILT


def spec(adapter: str, path: Path | None, **options) -> ModelSpec:
    return ModelSpec(adapter=adapter, label=adapter, tasks=["text", "markdown", "layout", "prompt"],
                     local_path=str(path) if path else None, options=options)


def page(width: int = 600, height: int = 400) -> Image.Image:
    image = Image.new("RGB", (width, height), "white")
    ImageDraw.Draw(image).rectangle((width // 15, height // 10, width - width // 15, height // 5), fill="black")
    return image


def fake_generate(model, tokenizer, reply: str, captured: dict | None = None):
    """Replace model.generate with one that 'generates' reply (then EOS), streaming it like the real
    one; the kwargs it was called with land in captured."""
    import torch

    eos = model.generation_config.eos_token_id
    eos = eos[0] if isinstance(eos, list) else eos

    def generate(**kwargs):
        if captured is not None:
            captured.update(kwargs)
        prompt = kwargs["input_ids"]
        new = torch.tensor([tokenizer(reply, add_special_tokens=False)["input_ids"] + [eos]])
        streamer = kwargs.get("streamer")
        if streamer is not None:
            streamer.put(prompt)
            for token in new[0]:
                streamer.put(token.unsqueeze(0))
            streamer.end()
        return torch.cat([prompt, new], dim=1)

    model.generate = generate


def spy_generate(model, captured: dict, max_new_tokens: int | None = None):
    """Record the kwargs model.generate gets, then really generate (optionally fewer tokens)."""
    original = model.generate

    def generate(**kwargs):
        captured.update(kwargs)
        if max_new_tokens is not None:
            kwargs["max_new_tokens"] = max_new_tokens
        return original(**kwargs)

    model.generate = generate
    return original


__all__ = ["CPU", "RunOptions", "tiny_models", "spec", "page", "fake_generate", "spy_generate"]
