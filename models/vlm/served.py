"""A VLM adapter's model on an OpenAI-compatible server (`backend: openai` in its registry entry).

VLMAdapter.served() puts ServedVLM in front of the adapter class, so the model's own steps stay
exactly as in-process: the pixel budget (`input_size`), the prompts (`prompt_for`), how the text
is framed (`served_messages`), the parsing (`parse`) and the page result. Only loading and
generating change: the page goes as a PNG data URL at the size its budget gives (so the server's
processor has nothing left to resize and boxes map back the same way), the server applies the chat
template, and the model's settings go as request parameters: greedy (temperature 0), the token cap,
repetition_penalty where configured, special tokens kept in the output (Qwen2-VL writes its boxes
with them). The loop guard applies the in-process rules to the stream, each streamed piece standing
for a token, and closing the stream when it fires makes vLLM stop generating. A chat turn goes the
same way, its page images and turns as chat messages (`served_chat_messages`).
"""
from __future__ import annotations

import importlib.util
import json
import os
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from PIL import Image

from models.contract import CHAT, Availability, PageResult, RunOptions, TokenCallback
from models.registry import ModelSpec, served_model_name
from models.vlm.generation import LoopGuardOptions, find_loop, general_span, loop_window, settle_output, token_cap
from models.vlm.layout_parsing import strip_special_tokens
from models.vlm.server import Completion, ServerClient, ServerHealth, image_data_url

if TYPE_CHECKING:
    from models.vlm.base import VLMAdapter

    _Base = VLMAdapter
else:
    _Base = object


class StreamLoopGuard:
    """The in-process loop guard's rules over streamed pieces: each distinct piece gets an id, so
    the pieces are a token sequence to find_loop, and `decode` joins them back."""

    def __init__(self, settings: LoopGuardOptions, max_new_tokens: int):
        self.settings = settings
        self.span = general_span(settings, max_new_tokens)
        # As in-process: nothing shorter can hold a loop, and only the tail needs looking at.
        self.earliest = min(max(self.span, 2 * settings.min_repeats), settings.fill_span)
        self.window = loop_window(settings, self.span)
        self.ids: list[int] = []
        self._id_of: dict[str, int] = {}
        self._piece_of: list[str] = []
        self.period: int | None = None

    def decode(self, ids: list[int]) -> str:
        return "".join(self._piece_of[i] for i in ids)

    def ids_of(self, pieces: list[str]) -> list[int]:
        ids = []
        for piece in pieces:
            if piece not in self._id_of:
                self._id_of[piece] = len(self._piece_of)
                self._piece_of.append(piece)
            ids.append(self._id_of[piece])
        return ids

    def __call__(self, pieces: list[str]) -> bool:
        if len(pieces) <= len(self.ids):  # a retried request streams from the start again
            self.ids = []
        self.ids += self.ids_of(pieces[len(self.ids):])
        if len(self.ids) < self.earliest:
            return False
        found = find_loop(self.ids[-self.window:], self.settings, self.span, self.decode)
        if found is None:
            return False
        self.period = found[0]
        return True


def _data_url(image: Image.Image, size: tuple[int, int]) -> str:
    """The page at the size its budget gives, so the server's processor has nothing left to resize."""
    page = image.convert("RGB")
    if page.size != size:
        page = page.resize(size, Image.Resampling.BICUBIC)
    return image_data_url(page)


def transcript(messages: list[dict], sizes: Sequence[tuple[int, int]]) -> str:
    """The conversation as it was sent, for the record (PageResult.prompt): the chat template is the
    server's, so this is the messages themselves, each image as its size instead of its bytes."""
    names = iter(f"<image {width}x{height}>" for width, height in sizes)

    def part(item: dict) -> dict:
        return {"type": "image_url", "image_url": next(names)} if item.get("type") == "image_url" else item

    shown = [{**message, "content": [part(item) for item in message["content"]]}
             if isinstance(message["content"], list) else message for message in messages]
    return json.dumps(shown, ensure_ascii=False, indent=1)


def _display(on_token: TokenCallback) -> TokenCallback:
    """Streamed text as in-process streaming shows it: without special tokens."""
    def show(piece: str) -> None:
        text = strip_special_tokens(piece)
        if text:
            on_token(text)

    return show


class ServedVLM(_Base):
    """Goes first in the bases of a VLMAdapter subclass; see VLMAdapter.served()."""

    _client: ServerClient | None = None

    @classmethod
    def availability(cls, spec: ModelSpec) -> Availability:
        """From the configuration alone: whether the server answers is health(), not this."""
        server = spec.server
        assert server is not None  # check_entry requires it for backend openai
        if importlib.util.find_spec("openai") is None:
            return Availability(available=False, status="not installed", reason="the openai package is missing",
                                fix="pip install -r requirements.txt")
        if server.api_key_env and not os.environ.get(server.api_key_env):
            return Availability(available=False, status="no API key",
                                reason=f"the environment variable {server.api_key_env} is not set",
                                fix=f"export {server.api_key_env}=<the server's API key>")
        return Availability(available=True, status="server",
                            reason=f"served as {served_model_name(spec)} at {', '.join(server.base_url)}")

    def load(self) -> None:
        assert self.spec.server is not None
        self._client = ServerClient(self.spec.server, served_model_name(self.spec))
        self.device, self.dtype, self.load_warnings = "server", None, []

    def health(self) -> ServerHealth:
        assert self._client is not None, "load() first"
        return self._client.health()

    def request_parameters(self, max_new_tokens: int) -> tuple[dict[str, Any], dict[str, Any]]:
        """(standard parameters, vLLM's own) for the model's settings."""
        params: dict[str, Any] = {"max_completion_tokens": max_new_tokens, "temperature": 0.0}
        extra: dict[str, Any] = {"skip_special_tokens": False}
        if self.options.repetition_penalty is not None:
            extra["repetition_penalty"] = self.options.repetition_penalty
        return params, extra

    def run(self, image: Image.Image, task: str, options: RunOptions,
            on_token: TokenCallback | None = None) -> PageResult:
        assert self._client is not None, "load() first"
        self._check_task(task)
        started = time.perf_counter()
        size = self.input_size(image.size, options)
        prompt = self.prompt_for(task, options, size, image.size)
        cap = token_cap(task, self.options.max_new_tokens, options.max_new_tokens)
        completion, raw, truncated, warnings = self._generate(
            self.served_messages(_data_url(image, size), prompt), cap, on_token)
        parsed = self.parse(raw, task, size, image.size)
        return self.result(task, text=parsed.text, markdown=parsed.markdown, blocks=parsed.blocks, raw=raw,
                           tokens=completion.tokens, truncated=truncated, warnings=warnings + parsed.warnings,
                           seconds=time.perf_counter() - started, width=image.width, height=image.height)

    def chat(self, images: Sequence[Image.Image], options: RunOptions,
             on_token: TokenCallback | None = None) -> PageResult:
        """One turn of a conversation about `images` on the server: the turns as chat messages (the
        images in the first), the model's settings and loop guard as for a page."""
        assert self._client is not None, "load() first"
        started = time.perf_counter()
        sizes, turns = self.chat_request(images, options)
        messages = self.served_chat_messages([_data_url(image, size) for image, size in zip(images, sizes,
                                                                                             strict=True)], turns)
        cap = token_cap(CHAT, self.options.max_new_tokens, options.max_new_tokens)
        completion, raw, truncated, warnings = self._generate(messages, cap, on_token)
        text = strip_special_tokens(raw).strip()
        return self.result(CHAT, text=text, markdown=text, raw=raw, prompt=transcript(messages, sizes),
                           images=sizes, tokens=completion.tokens, truncated=truncated, warnings=warnings,
                           seconds=time.perf_counter() - started)

    def _generate(self, messages: list[dict], cap: int,
                  on_token: TokenCallback | None) -> tuple[Completion, str, bool, list[str]]:
        """The request with the model's settings, the loop guard on the stream, and the raw output
        settled as in-process: (completion, raw output, truncated, warnings)."""
        assert self._client is not None, "load() first"
        params, extra = self.request_parameters(cap)
        guard = StreamLoopGuard(self.options.loop_guard, cap) if self.options.loop_guard.enabled else None
        completion = self._client.complete(messages, params, extra_body=extra,
                                           on_token=_display(on_token) if on_token else None, stop_when=guard)
        return (completion, *self._settle(completion, guard, cap))

    def _settle(self, completion: Completion, guard: StreamLoopGuard | None,
                cap: int) -> tuple[str, bool, list[str]]:
        """The raw output, cut after a loop as in-process, and whether and why it is incomplete."""
        if guard is None:
            guard = StreamLoopGuard(self.options.loop_guard, cap)  # only its piece ids and decode
        return settle_output(
            guard.ids_of(completion.pieces), tokens=completion.tokens,
            loop_period=guard.period if completion.finish_reason == "stopped" else None,
            hit_cap=completion.finish_reason == "length", max_new_tokens=cap, settings=self.options.loop_guard,
            span=guard.span, find_decode=guard.decode, text_decode=guard.decode)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
