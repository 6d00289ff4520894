"""The Chat page in AppTest: a classic engine is refused with the models that can chat; two streamed
turns with the tiny Qwen2-VL through the worker, kept in the store and reopened from History."""
import pytest

from tests.conftest_vlm import tiny_models  # noqa: F401 — the session fixture
from utils.store import Store


@pytest.fixture
def chat_app(app_test, monkeypatch, tmp_path):
    db = tmp_path / "results.db"
    monkeypatch.setenv("OCR_STORE_DB", str(db))

    def start():
        at = app_test(timeout=300)
        at.switch_page("pages/chat.py").run()
        assert not at.exception, at.exception
        return at

    return start, db


def test_a_classic_engine_cannot_chat_and_the_page_offers_the_vlms(chat_app):
    start, _ = chat_app
    at = start()
    assert at.session_state["model"] == "tesseract"
    assert at.warning[0].value.startswith("Tesseract") and "cannot chat: it only recognises text" in at.warning[0].value
    offered = [b.label for b in at.button if b.label.startswith("Chat with")]
    assert offered == ["Chat with Qwen2-VL 2B Instruct", "Chat with Qwen3-VL 2B Instruct"]
    assert any("not downloaded" in m.value for m in at.markdown)
    next(b for b in at.button if b.label == "Chat with Qwen2-VL 2B Instruct").click().run()
    assert at.session_state["model"] == "qwen_vl_2b" and not at.warning


def test_the_chat_page_opened_first_picks_the_default_model(app_test):
    """A link to /chat in a new session: the page is drawn before the sidebar has chosen a model."""
    at = app_test()
    at.switch_page("pages/chat.py")
    del at.session_state["model"]
    at.run()
    assert not at.exception, at.exception
    assert at.session_state["model"] == "tesseract" and "cannot chat" in at.warning[0].value


def test_dots_ocr_cannot_chat_either(chat_app):
    start, _ = chat_app
    at = start()
    at.sidebar.selectbox[0].set_value("dots_ocr").run()
    assert not at.exception, at.exception
    assert at.warning[0].value.startswith("dots.ocr (layout + text) cannot chat: it only recognises text")
    offered = [b.label for b in at.button if b.label.startswith("Chat with")]
    assert offered == ["Chat with Qwen2-VL 2B Instruct", "Chat with Qwen3-VL 2B Instruct"]
    assert not at.chat_input or at.chat_input[0].disabled  # nothing to ask until a VLM is picked


def test_two_turns_streamed_kept_and_reopened_from_history(chat_app, tiny_models, ru_en_png, monkeypatch):  # noqa: F811
    start, db = chat_app
    # Random weights never say EOS: a short cap keeps each answer to seconds.
    from utils.config import cached_settings

    monkeypatch.setitem(cached_settings().models["qwen_vl_2b"].options["max_new_tokens"], "chat", 12)
    at = start()
    at.sidebar.selectbox[0].set_value("qwen_vl_2b").run()
    at.sidebar.text_input[0].set_value(str(tiny_models["qwen_vl_2b"]))
    next(b for b in at.sidebar.button if b.label == "Use this folder").click().run()
    at.file_uploader[0].upload("invoice.png", ru_en_png, "image/png").run()
    at.chat_input[0].set_value("What is the number?").run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    at.chat_input[0].set_value("And the total?").run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    messages = [(m.name, m.markdown[0].value) for m in at.chat_message]
    assert [name for name, _ in messages] == ["user", "assistant"] * 2
    assert messages[0][1] == "What is the number?" and messages[2][1] == "And the total?"
    assert all(text.strip() for _, text in messages)
    assert any(c.value.startswith("What the model sees: qwen_vl_2b sees page 1 as images") for c in at.caption)

    chat, = Store(db).chats.recent()
    assert [t.text for t in chat.turns[::2]] == ["What is the number?", "And the total?"]
    # The second request carried the first turn (question and answer) in the prompt the adapter built.
    assert "What is the number?" in chat.turns[3].prompt and chat.turns[1].text in chat.turns[3].prompt
    assert "And the total?" not in chat.turns[1].prompt
    assert any(tokens for tokens in (chat.turns[1].tokens, chat.turns[3].tokens))

    # A fresh session (as after a server restart): History lists the chat, reopens and continues it.
    again = start()
    again.switch_page("pages/history.py").run()
    assert not again.exception, again.exception
    next(b for b in again.button if b.label == "Open in Chat").click().run()
    assert not again.exception, again.exception
    assert [m.name for m in again.chat_message] == ["user", "assistant"] * 2
    again.switch_page("pages/chat.py")  # AppTest stays on the page it was told; a browser follows st.switch_page
    again.chat_input[0].set_value("Anything else?").run()
    assert not again.exception and not again.error, [e.value for e in again.error]
    assert [t.role for t in Store(db).chats.get(chat.id).turns] == ["user", "assistant"] * 3


def test_a_document_uploaded_on_another_page_is_there_with_the_pages_it_will_see(chat_app, tiny_models):  # noqa: F811
    from tests.test_documents import make_pdf

    start, _ = chat_app
    at = start()
    at.sidebar.selectbox[0].set_value("qwen_vl_2b").run()
    if at.sidebar.text_input:  # not set yet by an earlier test (the folder is kept in the local settings)
        at.sidebar.text_input[0].set_value(str(tiny_models["qwen_vl_2b"]))
        next(b for b in at.sidebar.button if b.label == "Use this folder").click().run()
    at.switch_page("pages/ocr.py").run()
    at.file_uploader[0].upload("report.pdf", make_pdf(3), "application/pdf").run()
    at.switch_page("pages/chat.py").run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert any(m.value == "**Document:** report.pdf (3 pages)" for m in at.markdown)  # no second upload
    pages = next(t for t in at.text_input if t.label == "Pages")
    assert pages.value == "1"
    pages.set_value("2-3").run()
    captions = [caption for image in at.get("image") for caption in image.captions]
    assert captions == ["Page 2", "Page 3"]
    assert not at.chat_input[0].disabled
