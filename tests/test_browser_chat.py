"""The Chat page in headless chromium against `streamlit run app.py`, with the tiny Qwen2-VL checkpoint
through the worker: Tesseract cannot chat and the page offers the VLMs; two questions get answers
streamed into the page; after a server restart History reopens the chat with both turns and a third
question continues it. And a chat with a model on a server (the protocol double), streamed, whose
failure is one line.

The tiny checkpoint's random answers never end by themselves: the page's "Longest answer" keeps each
to a few tokens. With SCREENSHOTS_DIR set, the test saves the README's Chat screenshot there.
"""
from __future__ import annotations

import pytest

from tests.conftest import serve_app
from tests.conftest_vlm import tiny_models  # noqa: F401 — the session fixture
from tests.test_browser_served import HUB_ID
from tests.test_browser_served import _config as served_config
from tests.test_browser_workspace import new_tab, settle, shot, upload
from utils.store import Store

pytestmark = pytest.mark.browser

QUESTIONS = ["What is the invoice number?", "And the total?", "Who should pay it?"]
LONGEST = "24"  # tokens per answer: about a second of the tiny model on a CPU core

# Every text the stream element (TokenView's code block inside the answer) shows while a turn runs.
WATCH_STREAM = """() => {
    window.__streamed = [];
    new MutationObserver(() => {
        const codes = document.querySelectorAll('[data-testid=stChatMessage] [data-testid=stCode]');
        const text = codes.length ? codes[codes.length - 1].textContent : null;
        const seen = window.__streamed;
        if (text !== null && seen[seen.length - 1] !== text) seen.push(text);
    }).observe(document.body, {childList: true, subtree: true, characterData: true});
}"""

ANSWER_KEPT = """n => {
    const all = document.querySelectorAll('[data-testid=stChatMessage]');
    return all.length === n && [...all[n - 1].querySelectorAll('[data-testid=stCaptionContainer]')]
        .some(caption => / tokens · /.test(caption.textContent));
}"""


def messages(tab) -> list[tuple[str, str]]:
    """(role, text) of each chat message on the page."""
    found = []
    for message in tab.get_by_test_id("stChatMessage").all():
        user = message.get_by_test_id("stChatMessageAvatarUser").count() > 0
        found.append(("user" if user else "assistant",
                      message.get_by_test_id("stMarkdownContainer").first.inner_text().strip()))
    return found


def ask(tab, question: str, turns_before: int) -> list[str]:
    """Ask on the Chat page; wait for the answer to be kept and drawn. Returns the texts the stream
    element showed meanwhile."""
    longest = tab.get_by_role("spinbutton", name="Longest answer (tokens)")
    if longest.input_value() != LONGEST:
        longest.fill(LONGEST)
        longest.press("Enter")
        settle(tab)
    tab.evaluate(WATCH_STREAM)
    box = tab.get_by_test_id("stChatInputTextArea")
    box.fill(question)
    box.press("Enter")
    # The turn is over when the last answer is drawn as kept, with its token count (the stream element
    # stands in its place while it is generated).
    tab.wait_for_function(ANSWER_KEPT, arg=2 * (turns_before + 1))
    settle(tab)
    assert tab.get_by_test_id("stException").count() == 0 and tab.get_by_text("Traceback").count() == 0
    assert tab.get_by_test_id("stChatMessage").get_by_test_id("stCode").count() == 0
    return tab.evaluate("() => window.__streamed")


def assert_streamed(streamed: list[str]) -> None:
    # The answer was drawn while it was being generated, growing: each text the start of the next.
    assert streamed, "no streamed tokens were drawn during the turn"
    assert all(later.startswith(earlier) for earlier, later in zip(streamed, streamed[1:], strict=False))


def test_a_chat_streams_two_turns_and_continues_after_a_restart(browser, tiny_models, tmp_path,  # noqa: F811
                                                                ru_en_png):
    env = {"OCR_STORE_DB": str(tmp_path / "results.db"), "OCR_LOCAL_SETTINGS": str(tmp_path / "settings.json")}
    with serve_app(env) as url:
        context, tab = new_tab(browser)
        tab.goto(f"{url}/chat")
        tab.get_by_text("Tesseract", exact=False).filter(has_text="cannot chat").first.wait_for()
        tab.get_by_role("button", name="Chat with Qwen2-VL 2B Instruct").click()
        tab.get_by_text("Qwen2-VL 2B Instruct is not downloaded").wait_for()  # the sidebar says how
        sidebar = tab.get_by_test_id("stSidebar")
        sidebar.get_by_role("textbox", name="…or a local snapshot folder").fill(str(tiny_models["qwen_vl_2b"]))
        sidebar.get_by_role("button", name="Use this folder").click()
        tab.get_by_test_id("stFileUploader").wait_for()
        upload(tab, {"name": "invoice.png", "mimeType": "image/png", "buffer": ru_en_png})
        tab.get_by_text("invoice.png").first.wait_for()

        assert_streamed(ask(tab, QUESTIONS[0], 0))
        tab.get_by_text("What the model sees: qwen_vl_2b sees page 1 as images").wait_for()
        assert_streamed(ask(tab, QUESTIONS[1], 1))
        before = messages(tab)
        assert [role for role, _ in before] == ["user", "assistant"] * 2
        assert [text for role, text in before if role == "user"] == QUESTIONS[:2]
        shot(tab, "chat", height=1400)
        context.close()

    (chat,) = Store(tmp_path / "results.db").chats.recent()
    assert [t.text for t in chat.turns if t.role == "user"] == QUESTIONS[:2]

    with serve_app(env) as url:  # a fresh server process: only the store (and the saved folder) remember
        context, tab = new_tab(browser)
        tab.goto(f"{url}/history")
        tab.get_by_role("heading", name="History").wait_for()
        tab.get_by_role("button", name="Open in Chat").click()
        tab.get_by_text(f"Continuing chat {chat.id} about invoice.png with qwen_vl_2b").wait_for()
        settle(tab)
        assert messages(tab) == before
        assert_streamed(ask(tab, QUESTIONS[2], 2))
        after = messages(tab)
        assert after[:4] == before and [role for role, _ in after] == ["user", "assistant"] * 3
        assert after[4] == ("user", QUESTIONS[2])
        context.close()

    kept = Store(tmp_path / "results.db").chats.get(chat.id)
    assert kept is not None and [t.text for t in kept.turns if t.role == "user"] == QUESTIONS


def test_a_chat_with_a_served_model_streams_and_a_dead_server_is_one_line(browser, openai_double, tmp_path,
                                                                          ru_en_png):
    answers = ["The invoice number is 4521, dated 12 March 2024.", "The total due is 1 250 roubles."]
    openai_double.models = [HUB_ID]
    openai_double.answer = lambda body: answers[len(body["messages"]) // 2]
    openai_double.piece_delay_s = 0.1  # about a second per answer: several redraws of the stream
    env = {"OCR_CONFIG": str(served_config(tmp_path, openai_double.url)),
           "OCR_STORE_DB": str(tmp_path / "results.db"), "OCR_LOCAL_SETTINGS": str(tmp_path / "settings.json")}
    with serve_app(env) as url:
        context, tab = new_tab(browser)
        tab.goto(f"{url}/chat")
        tab.get_by_test_id("stSidebar").get_by_text(f"{HUB_ID} served (").wait_for()
        upload(tab, {"name": "invoice.png", "mimeType": "image/png", "buffer": ru_en_png})
        tab.get_by_text("invoice.png").first.wait_for()
        for turn, question in enumerate(QUESTIONS[:2]):
            streamed = ask(tab, question, turn)
            assert_streamed(streamed)
            assert len(set(streamed)) >= 2  # seen growing, not only drawn once
        assert messages(tab) == [("user", QUESTIONS[0]), ("assistant", answers[0]),
                                 ("user", QUESTIONS[1]), ("assistant", answers[1])]
        tab.get_by_text("What the model sees: qwen3_vl_2b sees page 1 as images (up to 2.10 MP each)").wait_for()
        openai_double.stop()
        box = tab.get_by_test_id("stChatInputTextArea")
        box.fill(QUESTIONS[2])
        box.press("Enter")
        error = tab.get_by_test_id("stAlert").filter(has_text="cannot connect")
        error.wait_for()
        assert error.inner_text().startswith("qwen3_vl_2b: ") and error.inner_text().count("\n") == 0
        context.close()
    second = openai_double.requests[1]
    assert second.turns == [("user", QUESTIONS[0]), ("assistant", answers[0]), ("user", QUESTIONS[1])]
    assert len(second.image_urls) == 1 and second.image_urls == openai_double.requests[0].image_urls
