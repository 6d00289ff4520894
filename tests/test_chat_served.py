"""Chat with a model on an OpenAI-compatible server (`backend: openai`), against the protocol double
(tests/openai_double.py), which refuses with vLLM's 400 what vLLM's chat endpoint would refuse.

Each turn goes out as chat messages: the page images (PNG data URLs at their share of the pixel
budget) and the recognised text of the other pages in the first user message, then the earlier turns,
then the question; the answer is streamed, loop-guarded and capped as a page is.
"""
from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

import cli
from models.contract import RunOptions
from models.qwen_vl import QwenVLAdapter
from models.registry import EntryError, check_entry
from models.vlm.server import ServerClient, ServerError, ServerOptions
from tests.conftest import png_bytes, render_text_page
from tests.conftest_vlm import CPU, spec, tiny_models  # noqa: F401 — the session fixture
from tests.openai_double import OpenAIDouble, request_problem
from utils.chat import CannotChat, ask, check_chat_model, failed_turn, start_chat
from utils.config import Settings, cached_settings, with_backend
from utils.documents.reader import Document, open_document
from utils.engine.loader import Loader, ModelUnavailable
from utils.store import Store

MODEL, HUB_ID = "qwen_vl_2b", "Qwen/Qwen2-VL-2B-Instruct"
QUESTIONS = ["What is the invoice number?", "And the total?", "Who is the recipient?"]
ANSWERS = ["The invoice number is 4521.", "The total is 1 250 roubles.", "A limited company."]


def document_of(pages: int) -> Document:
    images = [render_text_page([f"Invoice 4521, page {n + 1}", f"Line of page {n + 1}"], width=700 + 56 * n)
              for n in range(pages)]
    buffer = io.BytesIO()
    images[0].save(buffer, format="TIFF", save_all=True, append_images=images[1:])
    return open_document("invoice.tiff", buffer.getvalue())


def served_settings(double: OpenAIDouble, model: str = MODEL, **server) -> Settings:
    double.models = [cached_settings().model(model).hub_id]
    settings = with_backend(cached_settings(), model, "openai", double.url)
    for key, value in server.items():
        setattr(settings.models[model].server, key, value)
    return settings


def answer_per_turn(body: dict) -> str:
    """The answer to the n-th question: the n-th turn's request carries 2n - 1 messages."""
    return ANSWERS[len(body["messages"]) // 2]


def image_of(url: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))


def test_two_turns_carry_the_images_and_the_history(openai_double, tmp_path):
    openai_double.answer = answer_per_turn
    document = document_of(2)
    store = Store(tmp_path / "r.db")
    loader = Loader(served_settings(openai_double))
    streamed: list[str] = []
    try:
        chat, notes = start_chat(loader, document, [0, 1], MODEL, store)
        first = ask(loader, document, chat, QUESTIONS[0], streamed.append, store)
        second = ask(loader, document, chat, QUESTIONS[1], store=store, max_new_tokens=64)
        assert loader.resident_models == []  # no worker process: the server answered
    finally:
        loader.close()
    assert notes == [] and chat.image_pages == [0, 1] and chat.text_pages == []
    assert (first.text, second.text) == tuple(ANSWERS[:2])
    assert len(streamed) == first.tokens == 5 and "".join(streamed) == ANSWERS[0]  # piece by piece

    one, two = openai_double.requests
    assert all(request_problem(r.body) is None for r in (one, two))  # what vLLM accepts
    assert one.turns == [("user", QUESTIONS[0])]
    assert two.turns == [("user", QUESTIONS[0]), ("assistant", ANSWERS[0]), ("user", QUESTIONS[1])]
    # The images open the first user message, before its text, in both turns, the same bytes.
    assert [p["type"] for p in two.body["messages"][0]["content"]] == ["image_url", "image_url", "text"]
    assert len(one.image_urls) == 2 and two.image_urls == one.image_urls
    local = QwenVLAdapter(MODEL, cached_settings().model(MODEL), cached_settings().profile)
    for url, page in zip(one.image_urls, (0, 1), strict=True):
        size = image_of(url).size
        assert size == local.input_size(document.render(page).image.size, RunOptions(max_pixels=chat.max_pixels))
        assert size[0] * size[1] <= chat.max_pixels
    assert (one.body["max_completion_tokens"], two.body["max_completion_tokens"]) == (1024, 64)
    assert one.body["stream"] is True and one.body["temperature"] == 0.0 and one.body["skip_special_tokens"] is False

    kept = Store(tmp_path / "r.db").chats.get(chat.id)
    assert kept is not None and [t.text for t in kept.turns] == [QUESTIONS[0], ANSWERS[0], QUESTIONS[1], ANSWERS[1]]
    prompt = kept.turns[3].prompt  # the messages as sent, each image as its size
    assert QUESTIONS[0] in prompt and ANSWERS[0] in prompt and QUESTIONS[1] in prompt
    assert prompt.count("<image ") == 2 and "base64" not in prompt


def test_a_long_document_sends_what_fits_as_images_and_the_rest_as_text(openai_double):
    """A server's budget is the configured one: the CPU profile this machine may fall back to never
    shrinks it (4 Qwen2-VL pages fit the configured budget, 2 the CPU profile's)."""
    openai_double.answer = "Six pages."
    document = document_of(6)
    loader = Loader(served_settings(openai_double))
    try:
        loader.wait_for_preflight(120)
        chat, notes = start_chat(loader, document, list(range(6)), MODEL)
        ask(loader, document, chat, "How many pages?")
    finally:
        loader.close()
    assert chat.image_pages == [0, 1, 2, 3] and chat.text_pages == [4, 5] and chat.context_model == "tesseract"
    (request,) = openai_double.requests
    assert len(request.image_urls) == 4
    (role, text), = request.turns
    assert role == "user" and text.endswith("How many pages?")
    assert "[Page 5]" in text and "[Page 6]" in text and "page 6" in text and "[Page 4]" not in text


@pytest.mark.parametrize("fault, expected", [
    ("down", "cannot connect"),
    ("refused", "HTTP 400: At most 1 image(s) may be provided in one prompt."),
    ("timeout", "no answer within the timeout"),
])
def test_a_failed_turn_is_one_line_and_the_turns_so_far_stay(openai_double, fault, expected):
    openai_double.answer = answer_per_turn
    document = document_of(2)
    loader = Loader(served_settings(openai_double, retries=0, timeout_s=1.0, backoff_s=0.0))
    try:
        chat, _ = start_chat(loader, document, [0, 1], MODEL)
        ask(loader, document, chat, QUESTIONS[0])
        if fault == "down":
            openai_double.stop()
        elif fault == "refused":
            openai_double.image_limit = 1  # as `vllm serve --limit-mm-per-prompt.image 1`
        else:
            openai_double.slow_s = 5.0
            openai_double.fail_next("slow")
        with pytest.raises(Exception) as caught:
            ask(loader, document, chat, QUESTIONS[1])
    finally:
        loader.close()
    line = failed_turn(MODEL, caught.value)
    assert expected in line and "\n" not in line and line.count(f"{MODEL}:") == 1
    assert [t.text for t in chat.turns] == [QUESTIONS[0], ANSWERS[0]]  # the failed question is not kept
    if fault == "down":
        assert isinstance(caught.value, ModelUnavailable)
    if fault == "refused":
        assert len(openai_double.requests) == 2  # a 400 is not retried


def test_the_loop_guard_and_the_token_cap_apply_to_an_answer(openai_double):
    document = document_of(1)
    loader = Loader(served_settings(openai_double))
    try:
        chat, _ = start_chat(loader, document, [0], MODEL)
        openai_double.answer = " ".join(f"word{i}" for i in range(100))
        capped = ask(loader, document, chat, "List the words.", max_new_tokens=10)
        openai_double.answer = "The number is 4521.\n" + "la " * 3000
        looped = ask(loader, document, chat, "And again?", max_new_tokens=4096)
    finally:
        loader.close()
    assert capped.text.split() == [f"word{i}" for i in range(10)]
    assert any("token cap (10" in w for w in capped.warnings)
    assert looped.text.startswith("The number is 4521.") and looped.tokens is not None and looped.tokens < 1200
    assert any("loop" in w for w in looped.warnings)  # stopped on the stream, not at the 3000th piece


def test_whether_a_served_model_chats_follows_its_entry(openai_double):
    settings = served_settings(openai_double)
    settings.models[MODEL].tasks.remove("chat")
    loader = Loader(settings)
    try:
        assert not loader.status(MODEL).chats and loader.status(MODEL).availability.available
        with pytest.raises(CannotChat, match="qwen_vl_2b cannot chat: it only recognises text. Models that can "
                                             "chat: qwen3_vl_2b"):
            check_chat_model(loader, MODEL)
        with pytest.raises(ValueError, match="qwen_vl_2b cannot chat: its entry's tasks are text, markdown"):
            loader.chat(MODEL, [document_of(1).render(0).image], RunOptions(prompt="hi"))
    finally:
        loader.close()
    assert openai_double.requests == []
    chatting = Loader(served_settings(openai_double))
    try:
        assert chatting.status(MODEL).chats
    finally:
        chatting.close()
    dots = with_backend(cached_settings(), "dots_ocr", "openai", openai_double.url).model("dots_ocr")
    dots.tasks.append("chat")  # dots.ocr reads pages; it does not chat, served or not
    with pytest.raises(EntryError, match="tasks: adapter dots_ocr supports .* got \\['chat'\\]"):
        check_entry(dots)


@pytest.mark.parametrize("model, family", [("qwen_vl_2b", "qwen2_vl"), ("qwen3_vl_2b", "qwen3_vl")])
def test_the_server_gets_the_conversation_the_model_gets_in_process(openai_double, tiny_models,  # noqa: F811
                                                                    model, family):
    """The messages sent, put through the checkpoint's own chat template (what vLLM does with them),
    give the prompt the in-process adapter builds for the same turn."""
    options = RunOptions(prompt="And the total?", history=(("user", "What is the number?"), ("assistant", "42")),
                         context="Page three text", max_pixels=200_000, max_new_tokens=4)
    images = [document_of(2).render(page).image for page in (0, 1)]
    local = QwenVLAdapter(model, spec("qwen_vl", tiny_models[model], family=family), CPU)
    local.spec.tasks.append("chat")
    local.load()
    sizes, turns = local.chat_request(images, options)
    _, in_process = local.encode_chat(images, sizes, turns)
    loader = Loader(served_settings(openai_double, model))
    try:
        result = loader.chat(model, images, options)
    finally:
        loader.close()
    (request,) = openai_double.requests
    on_server = local._processor.apply_chat_template(request.body["messages"], tokenize=False,
                                                     add_generation_prompt=True)
    assert on_server == in_process
    assert in_process.count("<|vision_start|>") == 2 and "Page three text" in in_process
    assert result.images == [image_of(url).size for url in request.image_urls]


def test_cli_chat_through_a_server_url(openai_double, tmp_path, capsys):
    openai_double.models = [HUB_ID]
    openai_double.answer = answer_per_turn
    path = tmp_path / "invoice.png"
    path.write_bytes(png_bytes(render_text_page(["Invoice 4521"])))
    args = ["chat", str(path), "--model", MODEL, "--backend", "openai", "--base-url", openai_double.url,
            "--db", str(tmp_path / "r.db"), "-q", QUESTIONS[0], "-q", QUESTIONS[1]]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert out == f"> {QUESTIONS[0]}\n{ANSWERS[0]}\n> {QUESTIONS[1]}\n{ANSWERS[1]}\n"
    assert openai_double.requests[1].turns[:2] == [("user", QUESTIONS[0]), ("assistant", ANSWERS[0])]
    openai_double.stop()
    assert cli.main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"cli.py: error: {MODEL}: ") and "cannot connect" in err


PNG_URL = "data:image/png;base64," + base64.b64encode(png_bytes(Image.new("RGB", (28, 28), "white"))).decode()


def user(*parts: dict) -> dict:
    return {"role": "user", "content": list(parts)}


@pytest.mark.parametrize("messages, problem", [
    ([user({"type": "image_url", "image_url": {"url": PNG_URL}}, {"type": "text", "text": "q"}),
      {"role": "assistant", "content": "a"}, {"role": "user", "content": "q2"}], None),
    ([], "messages: expected a non-empty list"),
    ([{"role": "robot", "content": "q"}], "messages[0]: expected an object with a role of"),
    ([user({"type": "image", "image": PNG_URL})], "messages[0].content[0]: unknown part type 'image'"),
    ([user({"type": "text", "content": "q"})], "messages[0].content[0].text: expected a string"),
    ([user({"type": "image_url", "image_url": PNG_URL})], 'image_url: expected {"url": <string>}'),
    ([user({"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}})], "cannot be loaded"),
    ([user({"type": "image_url", "image_url": {"url": "/tmp/page.png"}})], "expected a data:image/...;base64, URL"),
    ([{"role": "assistant", "content": [{"type": "image_url", "image_url": {"url": PNG_URL}}]}],
     "messages[0]: images go in user messages, not in assistant ones"),
    ([user({"type": "image_url", "image_url": {"url": PNG_URL}}, {"type": "image_url", "image_url": {"url": PNG_URL}})],
     "At most 1 image(s) may be provided in one prompt."),
])
def test_the_double_refuses_what_vllm_refuses(openai_double, messages, problem):
    body = {"model": "served-model", "messages": messages, "max_completion_tokens": 8}
    found = request_problem(body, image_limit=1)
    assert found == problem if problem is None else problem in found
    if problem is not None:  # and over HTTP, as vLLM's 400
        client = ServerClient(ServerOptions(base_url=openai_double.url, retries=0), "served-model")
        openai_double.image_limit = 1
        try:
            with pytest.raises(ServerError, match="HTTP 400"):
                client.complete(messages, {"max_completion_tokens": 8})
        finally:
            client.close()
