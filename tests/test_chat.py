"""Chat about a document: the adapter's conversation prompt, the engine's page split, the store, the CLI.

The tiny checkpoints have random weights: answers are gibberish, so the tests check structure (turns,
the prompt the adapter built, what was stored), not content.
"""
import re
import sqlite3
import subprocess
import sys

import pytest

from models.contract import RunOptions
from models.qwen_vl import QwenVLAdapter
from tests.conftest import ROOT, png_bytes
from tests.conftest_vlm import CPU, page, spec, tiny_models  # noqa: F401 — the session fixture
from utils.store import Chat, ChatTurn, Store


def test_the_conversation_reaches_the_model_with_its_images_and_context(tiny_models):  # noqa: F811
    adapter = QwenVLAdapter("qwen_vl_2b", spec("qwen_vl", tiny_models["qwen_vl_2b"], family="qwen2_vl"), CPU)
    adapter.spec.tasks.append("chat")
    adapter.load()
    options = RunOptions(prompt="And the total?", history=(("user", "What is the number?"), ("assistant", "42")),
                         context="Page three text", max_pixels=200_000, max_new_tokens=4)
    streamed: list[str] = []
    result = adapter.chat([page(600, 400), page(300, 500)], options, streamed.append)
    assert result.task == "chat" and result.tokens and "".join(streamed).strip()
    # Both images, then the context and the first question in the first user turn, then the answer, then the new one.
    assert result.prompt.count("<|image_pad|>") == 2 and result.prompt.count("<|vision_start|>") == 2
    order = [result.prompt.index(s) for s in ("<|vision_start|>", "Page three text", "What is the number?",
                                              "<|im_start|>assistant\n42", "And the total?")]
    assert order == sorted(order)
    assert all(w * h <= 200_000 for w, h in result.images) and len(result.images) == 2


def test_a_chat_turn_needs_a_question_and_a_user_first():
    with pytest.raises(ValueError, match="roles"):
        RunOptions(history=(("system", "x"),))
    from models.vlm.base import chat_turns

    with pytest.raises(ValueError, match="start with the user"):
        chat_turns(RunOptions(prompt="q", history=(("assistant", "a"),)))


def test_chats_are_kept_and_continued(tmp_path):
    store = Store(tmp_path / "r.db")
    chat = Chat(model="m", digest="d" * 64, document_name="a.pdf", pages=[0, 1, 2], image_pages=[0, 1],
                context="text", max_pixels=100)
    chat.turns = [ChatTurn(role="user", text="q1"), ChatTurn(role="assistant", text="a1", prompt="P")]
    chat_id = store.chats.save(chat)
    again = Store(tmp_path / "r.db").chats.get(chat_id)
    assert again is not None and again.turns == chat.turns and again.text_pages == [2]
    again.turns.append(ChatTurn(role="user", text="q2"))
    assert store.chats.save(again) == chat_id
    assert [t.text for t in store.chats.recent()[0].turns] == ["q1", "a1", "q2"]


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "cli.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=400)


def test_cli_chat_two_turns_in_one_conversation(tiny_models, tmp_path):  # noqa: F811
    image = tmp_path / "page.png"
    image.write_bytes(png_bytes(page()))
    db = tmp_path / "r.db"
    done = cli("chat", str(image), "--model", "qwen_vl_2b", "--model-path", str(tiny_models["qwen_vl_2b"]),
               "--db", str(db), "-q", "What is the number?", "-q", "And the total?")
    assert done.returncode == 0, done.stderr
    questions = re.findall(r"^> (.*)$", done.stdout, re.M)
    assert questions == ["What is the number?", "And the total?"]
    answers = [a.strip() for a in re.split(r"^> .*$", done.stdout, flags=re.M)[1:]]
    assert len(answers) == 2 and all(answers)
    assert "qwen_vl_2b sees page 1 as images" in done.stderr
    with sqlite3.connect(db) as con:
        (chat_id,) = con.execute("SELECT id FROM chats").fetchone()
    chat = Store(db).chats.get(chat_id)
    assert chat is not None and [t.role for t in chat.turns] == ["user", "assistant"] * 2
    first, second = chat.turns[1], chat.turns[3]
    # The second request carried the first turn: its prompt holds the first question and answer.
    assert "What is the number?" in second.prompt and first.text in second.prompt and "And the total?" in second.prompt
    assert "And the total?" not in first.prompt


@pytest.mark.parametrize("args, message", [
    (["--model", "tesseract"], "tesseract cannot chat: it only recognises text. Models that can chat: qwen_vl_2b"),
    (["--model", "nope"], "unknown model 'nope'"),
])
def test_cli_chat_refuses_a_model_that_cannot_chat(tmp_path, ru_en_png, args, message):
    image = tmp_path / "page.png"
    image.write_bytes(ru_en_png)
    done = cli("chat", str(image), *args, "--db", str(tmp_path / "r.db"), "-q", "hi")
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr
