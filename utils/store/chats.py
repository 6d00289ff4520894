"""Conversations kept in the store: what the model was shown and every turn, so History can reopen
and continue them. The source document is kept with the results' documents (Store.keep)."""
from __future__ import annotations

import json
import sqlite3
import time
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, Field

if TYPE_CHECKING:
    from utils.store.store import Store


class ChatTurn(BaseModel):
    role: Literal["user", "assistant"]
    text: str
    # An answer's facts: the prompt as the model got it (chat template applied; on a server, the messages sent,
    # images as their sizes), its speed and warnings.
    prompt: str = ""
    tokens: int | None = None
    seconds: float | None = None
    warnings: list[str] = Field(default_factory=list)


class Chat(BaseModel):
    id: int | None = None
    model: str
    digest: str
    document_name: str
    pages: list[int]  # 0-based, the pages the user chose
    image_pages: list[int]  # the ones sent as images; the others went as recognised text
    context_model: str | None = None  # the engine that recognised the text pages
    context: str = ""
    max_pixels: int | None = None  # each image's pixel budget
    turns: list[ChatTurn] = Field(default_factory=list)
    created_at: float = 0.0
    updated_at: float = 0.0

    @property
    def text_pages(self) -> list[int]:
        return [p for p in self.pages if p not in self.image_pages]

    @property
    def title(self) -> str:
        first = next((t.text for t in self.turns if t.role == "user"), "")
        return first if len(first) <= 60 else first[:59] + "…"


def _chat(row: sqlite3.Row) -> Chat:
    return Chat(id=row["id"], model=row["model"], digest=row["digest"], document_name=row["document_name"],
                pages=json.loads(row["pages"]), image_pages=json.loads(row["image_pages"]),
                context_model=row["context_model"], context=row["context"], max_pixels=row["max_pixels"],
                turns=[ChatTurn.model_validate(t) for t in json.loads(row["turns"])],
                created_at=row["created_at"], updated_at=row["updated_at"])


class Chats:
    """The store's chats table; reached as Store.chats."""

    def __init__(self, store: Store):
        self._store = store

    def save(self, chat: Chat) -> int:
        """Insert a new chat or rewrite a kept one; sets and returns chat.id."""
        now = time.time()
        chat.created_at = chat.created_at or now
        chat.updated_at = now
        turns = json.dumps([t.model_dump() for t in chat.turns], ensure_ascii=False)
        with self._store.transaction() as con:
            if chat.id is None:
                cursor = con.execute(
                    """INSERT INTO chats (model, digest, document_name, pages, image_pages, context_model, context,
                       max_pixels, turns, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                    (chat.model, chat.digest, chat.document_name, json.dumps(chat.pages), json.dumps(chat.image_pages),
                     chat.context_model, chat.context, chat.max_pixels, turns, chat.created_at, now))
                chat.id = cursor.lastrowid
            else:
                con.execute("UPDATE chats SET turns = ?, updated_at = ? WHERE id = ?", (turns, now, chat.id))
        assert chat.id is not None
        return chat.id

    def get(self, chat_id: int) -> Chat | None:
        with self._store.connect() as con:
            row = con.execute("SELECT * FROM chats WHERE id = ?", (chat_id,)).fetchone()
        return _chat(row) if row is not None else None

    def recent(self, limit: int = 50) -> list[Chat]:
        with self._store.connect() as con:
            rows = con.execute("SELECT * FROM chats ORDER BY updated_at DESC, id DESC LIMIT ?", (limit,)).fetchall()
        return [_chat(row) for row in rows]

    def delete(self, chat_id: int) -> bool:
        with self._store.transaction() as con:
            return con.execute("DELETE FROM chats WHERE id = ?", (chat_id,)).rowcount > 0
