"""Chat page: ask a VLM questions about a document's pages, turn by turn, answers streamed.

The document comes from the workspace (uploaded here or on another page) and the pages the model
sees are shown above the conversation. Each turn goes through the same Loader as OCR: the guard and
worker, or for a model on a server its client, as the model's pages do. The conversation is kept in
the results store after every answer; History lists the chats and reopens one here to continue it.
"""
from __future__ import annotations

import streamlit as st

from pages.ui.common import (
    TokenView,
    current_model,
    get_loader,
    model_catalog,
    model_label,
    require_app_shell,
    thumbnail,
)
from pages.ui.session import document_picker, workspace_with_uploads
from pages.ui.stored import get_store
from pages.ui.workspace import get_workspace, kept
from utils.chat import ask, failed_turn, seen_line, start_chat
from utils.documents.reader import Document, DocumentError
from utils.engine.loader import ModelStatus
from utils.messages import one_line
from utils.store import Chat

REOPEN = "chat_reopen"  # set by History: the id of a kept chat to continue here
SEEN_THUMBS = 8  # thumbnails of the pages a chat is about, at most


def _offer_chat_models(current: ModelStatus, catalog: list[ModelStatus]) -> None:
    st.warning(f"{current.label} cannot chat: it only recognises text. Pick a vision-language model:")
    able = [s for s in catalog if s.chats]
    if not able:
        st.info("No model that can chat is configured (config.yaml: a VLM entry with `chat` in its tasks).")
    for status in able:
        left, right = st.columns([3, 1])
        left.markdown(f"**{status.label}** (`{status.name}`) — {model_label(status).rsplit(' — ', 1)[-1]}"
                      + ("" if status.availability.available else f": {status.availability.reason}"))
        if right.button(f"Chat with {status.label}", key=f"chat_pick_{status.name}"):
            st.session_state["model"] = status.name
            st.rerun()


def _reopen() -> None:
    chat_id = st.session_state.pop(REOPEN, None)
    if chat_id is None:
        return
    store = get_store()
    chat = store.chats.get(chat_id)
    if chat is None:
        st.warning("That chat was deleted meanwhile.")
        return
    st.session_state["chat"] = chat
    document = store.open_document(chat.digest, chat.document_name)
    st.session_state["chat_document"] = document
    if document is not None:  # the other pages can show it too
        get_workspace().add(document)


def _new_chat_source() -> tuple[Document, list[int], list[str]] | None:
    """The workspace's open document (uploaded here or on another page) and the pages chosen."""
    workspace, _ = workspace_with_uploads("chat_upload", "Scans or PDFs")
    if workspace.document is None:
        st.info("Upload a page or a document (or open one on another page), then ask about it below.")
        return None
    document = document_picker(workspace, "chat_document_pick")
    pages = st.text_input("Pages", key=kept(f"chat_pages_{document.digest[:16]}", "1" if document.page_count > 1
                                            else "", lambda v: isinstance(v, str)),
                          help='like "1-3,7"; empty: all pages')
    try:
        selection = document.select(pages or None)
    except DocumentError as exc:
        st.error(str(exc))
        return None
    return document, list(selection.indices), list(selection.warnings)


def _show_pages(document: Document, pages: list[int], chat: Chat | None) -> None:
    """Small images of the pages the chat is about, each saying how the model gets it."""
    shown = pages[:SEEN_THUMBS]
    columns = st.columns(max(len(shown), 4))
    for column, page in zip(columns, shown):
        image = thumbnail(document.digest, page, document)
        if image is None:
            continue
        how = "" if chat is None else " · as image" if page in chat.image_pages else " · as text"
        column.image(image, caption=f"Page {page + 1}{how}")
    if len(pages) > len(shown):
        st.caption(f"…and {len(pages) - len(shown)} more page(s)")


def _show(chat: Chat) -> None:
    for turn in chat.turns:
        with st.chat_message(turn.role):
            st.markdown(turn.text or "*(empty answer)*")
            if turn.role == "assistant" and turn.tokens:
                st.caption(f"{turn.tokens} tokens · {turn.seconds or 0:.1f} s")
            for warning in turn.warnings:
                st.caption(f"⚠ {warning}")


def main() -> None:
    require_app_shell("pages/chat.py")
    st.title("Chat")
    _reopen()
    catalog = model_catalog()
    by_name = {s.name: s for s in catalog}
    chat: Chat | None = st.session_state.get("chat")
    document: Document | None = st.session_state.get("chat_document")
    if chat is not None and st.button("New chat", icon=":material/add_comment:"):
        st.session_state.pop("chat", None)
        st.session_state.pop("chat_document", None)
        st.rerun()
    if chat is None:
        current = by_name[current_model()]  # opened first (a link to /chat): the sidebar has not set it yet
        if not current.chats:
            _offer_chat_models(current, catalog)
            return
        if not current.availability.available:
            st.info(f"{current.label} is {current.availability.status}: see the sidebar to make it available.")
            return
        source = _new_chat_source()
        if source is None:
            return
        document, pages, notes = source
        model = current.name
    else:
        model, pages, notes = chat.model, chat.pages, []
        st.caption(f"Continuing chat {chat.id} about {chat.document_name} with {model}")
        if document is None:
            st.warning("The document of this chat is no longer kept (store.max_files_mb): it can be read, "
                       "not continued.")
    if document is not None:
        _show_pages(document, pages, chat)
    if chat is not None:
        st.caption(f"What the model sees: {seen_line(chat)}")
    for note in notes + st.session_state.get("chat_notes", []):
        st.caption(f"⚠ {note}")
    if chat is not None:
        _show(chat)
    longest = st.number_input("Longest answer (tokens)", min_value=8, max_value=8192, value=1024, step=64,
                              key="chat_max_tokens")
    question = st.chat_input("Ask about the document", disabled=document is None, key="chat_question")
    if not question or document is None:
        return
    loader, store = get_loader(), get_store()
    if chat is None:
        try:
            with st.spinner("Reading the pages not sent as images…"):
                chat, notes = start_chat(loader, document, pages, model, store)
        except Exception as exc:  # the engine for the other pages failed, or the model cannot chat
            st.error(one_line(exc))
            return
        st.session_state["chat"], st.session_state["chat_document"] = chat, document
        st.session_state["chat_notes"] = notes
        st.caption(f"What the model sees: {seen_line(chat)}")
    with st.chat_message("user"):
        st.markdown(question)
    with st.chat_message("assistant"):
        view = TokenView(st.empty(), tail=4000)
        try:
            ask(loader, document, chat, question, view, store, max_new_tokens=int(longest))
        except Exception as exc:  # out of memory, a worker that died twice: one line, the turns so far kept
            st.error(failed_turn(model, exc))
            return
    st.rerun()  # draw the kept turns the same way as after a reopen


main()
