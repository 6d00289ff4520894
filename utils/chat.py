"""A conversation about a document: which pages the model sees as images, the recognised text of the
others, and one turn at a time through the Loader (the same guard and worker as OCR, or the server
of a model with `backend: openai`).

The model's pixel budget for one image is split across the pages: as many pages go as images as fit
without shrinking a page below the model's own minimum; the rest are recognised with the default
classic engine (a result already in the store is reused) and go before the first question as text.
"""
from __future__ import annotations

from collections.abc import Sequence

from models.base import ModelAdapter
from models.contract import RunOptions, TokenCallback
from models.registry import adapter_class
from utils.documents.reader import Document
from utils.engine.loader import Loader, WaitCallback
from utils.engine.runner import result_key, run_pages
from utils.messages import one_line
from utils.store import Chat, ChatTurn, Store

CONTEXT_CHARS = 12_000  # recognised text past this is left out (and the chat says so)


class CannotChat(ValueError):
    """The model picked cannot chat; the message names those that can."""


def chat_models(loader: Loader) -> list[str]:
    return [status.name for status in loader.catalog() if status.chats]


def check_chat_model(loader: Loader, model: str) -> None:
    if model not in loader.settings.models:
        raise CannotChat(f"unknown model {model!r}; models that can chat: {', '.join(chat_models(loader))}")
    if not loader.status(model).chats:
        raise CannotChat(f"{model} cannot chat: it only recognises text. Models that can chat: "
                         f"{', '.join(chat_models(loader)) or 'none configured'}")


def split_pages(loader: Loader, model: str, pages: Sequence[int]) -> tuple[list[int], list[int], int]:
    """(pages sent as images, pages sent as text, each image's max_pixels)."""
    spec = loader.spec(model)
    adapter: ModelAdapter = adapter_class(spec)(model, spec, loader.settings.profile)  # validates options only
    low, high = adapter.pixel_range()  # type: ignore[attr-defined]
    count = max(1, min(len(pages), high // max(low, 1)))
    return list(pages[:count]), list(pages[count:]), high // count


def recognised_text(loader: Loader, document: Document, pages: Sequence[int], store: Store | None,
                    model: str | None) -> tuple[str, list[str]]:
    """The text of `pages` from `model` (a stored result when there is one), and notes on what is missing."""
    if not pages:
        return "", []
    if model is None:
        return "", ["no classic engine is available to recognise the pages not sent as images"]
    texts: dict[int, str] = {}
    missing = []
    for page in pages:
        stored = store.latest(result_key(document, page, model, "text", None)) if store is not None else None
        if stored is not None:
            texts[page] = stored.result.text
        else:
            missing.append(page)
    notes = []
    for outcome in run_pages(loader, document, missing, model, "text"):
        if outcome.result is not None:
            texts[outcome.page] = outcome.result.text
            if store is not None:
                store.save(outcome.key, outcome.result, document)
        else:
            notes.append(outcome.error or f"page {outcome.page + 1}: no text")
    context = "\n\n".join(f"[Page {page + 1}]\n{texts[page].strip()}" for page in pages if page in texts)
    if len(context) > CONTEXT_CHARS:
        context = context[:CONTEXT_CHARS]
        notes.append(f"the recognised text was cut to its first {CONTEXT_CHARS} characters")
    return context, notes


def start_chat(loader: Loader, document: Document, pages: Sequence[int], model: str,
               store: Store | None = None) -> tuple[Chat, list[str]]:
    """A new conversation (not yet saved) and notes on what the model will not see."""
    check_chat_model(loader, model)
    if not pages:
        raise ValueError("choose at least one page")
    images, texts, max_pixels = split_pages(loader, model, pages)
    context_model = loader.default_model()
    context, notes = recognised_text(loader, document, texts, store, context_model)
    if store is not None:
        store.keep(document)
    chat = Chat(model=model, digest=document.digest, document_name=document.name, pages=list(pages),
                image_pages=images, context_model=context_model if texts else None, context=context,
                max_pixels=max_pixels)
    return chat, notes


def ask(loader: Loader, document: Document, chat: Chat, question: str, on_token: TokenCallback | None = None,
        store: Store | None = None, on_wait: WaitCallback | None = None,
        max_new_tokens: int | None = None) -> ChatTurn:
    """One turn: the question and the earlier turns go to the model with the image pages; the answer is
    appended to chat.turns (with the question) and the chat saved when a store is given.
    `max_new_tokens`: the longest answer (None: the model's configured cap for chat)."""
    if not question.strip():
        raise ValueError("ask a question")
    images = [document.render(page).image for page in chat.image_pages]
    options = RunOptions(prompt=question, history=tuple((t.role, t.text) for t in chat.turns),
                         context=chat.context or None, max_pixels=chat.max_pixels, max_new_tokens=max_new_tokens)
    result = loader.chat(chat.model, images, options, on_token, on_wait=on_wait)
    answer = ChatTurn(role="assistant", text=result.text, prompt=result.prompt, tokens=result.tokens,
                      seconds=result.seconds, warnings=result.warnings)
    chat.turns += [ChatTurn(role="user", text=question), answer]
    if store is not None:
        store.chats.save(chat)
    return answer


def failed_turn(model: str, exc: BaseException) -> str:
    """A turn that failed (a server down or refusing, a timeout, out of memory), in one line that
    names the model once."""
    line = one_line(exc)
    return line if line.startswith((f"{model}:", f"{model} ")) else f"{model}: {line}"


def seen_line(chat: Chat) -> str:
    """What the model saw, in one line for the user."""
    shown = ", ".join(str(p + 1) for p in chat.image_pages)
    line = f"{chat.model} sees page{'s' if len(chat.image_pages) > 1 else ''} {shown} as images"
    if chat.max_pixels:
        line += f" (up to {chat.max_pixels / 1e6:.2f} MP each)"
    if chat.text_pages:
        line += (f"; page{'s' if len(chat.text_pages) > 1 else ''} {', '.join(str(p + 1) for p in chat.text_pages)} "
                 f"as text recognised by {chat.context_model or 'no engine'}")
    return line
