"""The parts of the workspace the pages share: adding documents, choosing one, bringing the last
session back, the page strip, and the store they write to."""
from __future__ import annotations

from collections.abc import Collection

import streamlit as st

from pages.ui.common import thumbnail
from pages.ui.shell import draw_uploader
from pages.ui.stored import get_store
from pages.ui.workspace import Workspace, get_workspace
from utils.documents.reader import Document
from utils.messages import one_line
from utils.store import Store

MIME = {"txt": "text/plain", "md": "text/markdown", "json": "application/json", "zip": "application/zip"}
STRIP_PAGES = 10  # thumbnails in the strip; a longer document shows the ones around the page shown


def store_or_none(workspace: Workspace) -> Store | None:
    """The results store, or None (and a note, once) when it cannot be opened: OCR goes on without it."""
    try:
        return get_store()
    except Exception as exc:
        note = f"The results store cannot be opened ({one_line(exc)}): results are not kept beyond this tab."
        if note not in workspace.notes:
            workspace.notes.append(note)
        return None


def show_notes(workspace: Workspace) -> None:
    """Warnings from runs and from the store, each shown until dismissed."""
    for number, note in enumerate(list(workspace.notes)):
        left, right = st.columns([12, 1], vertical_alignment="center")
        left.warning(note)
        right.button("✕", key=f"note_{number}_{hash(note)}", help="Dismiss", on_click=workspace.notes.remove,
                     args=(note,))


def _restore(workspace: Workspace, store: Store) -> None:
    saved = store.last_workspace(exclude=workspace.session)
    if saved is None:
        return
    missing = workspace.restore(store, saved)
    workspace.notes.extend(f"Not restored: {line}" for line in missing)


def restore_offer(workspace: Workspace, store: Store | None) -> None:
    """On an empty workspace: one click brings back the last session's documents and results."""
    if store is None or workspace.documents or workspace.restored:
        return
    try:
        saved = store.last_workspace(exclude=workspace.session)
    except Exception:  # a store that cannot say just offers nothing; the page works without it
        return
    if saved is None or not saved.state.get("documents"):
        return
    documents = saved.state["documents"]
    names = ", ".join(d["name"] for d in documents[:3]) + (f" and {len(documents) - 3} more" if len(documents) > 3
                                                            else "")
    results = len(saved.state.get("results", []))
    when = saved.updated_at.astimezone().strftime("%Y-%m-%d %H:%M")
    left, right = st.columns([3, 1], vertical_alignment="center")
    left.info(f"Your last session ({when}): {names} · {results} result(s).", icon=":material/history:")
    right.button("Restore last session", key="restore_session", type="primary", on_click=_restore,
                 args=(workspace, store), width="stretch")


def workspace_with_uploads(key: str, label: str) -> tuple[Workspace, Store | None]:
    """The session's workspace with this page's uploader feeding it, its unreadable files, the offer to
    bring the last session back and the notes; and the store (None when it cannot be opened)."""
    workspace = get_workspace()
    store = store_or_none(workspace)
    workspace.sync_uploads(key, *draw_uploader(key, label), store)
    show_rejected(workspace, key)
    restore_offer(workspace, store)
    show_notes(workspace)
    return workspace, store


def show_rejected(workspace: Workspace, key: str) -> None:
    """One error per file of this uploader that cannot be read; it goes when the file is removed."""
    for message in workspace.rejected(key):
        st.error(message)


def document_picker(workspace: Workspace, key: str) -> Document:
    """Which of the workspace's documents is open (the newest added unless the user picks another)."""
    documents = workspace.documents
    document = workspace.document
    assert document is not None  # the caller checked the workspace has one

    def label(digest: str) -> str:
        count = documents[digest].page_count
        return f"{documents[digest].name} ({count} page{'s' if count > 1 else ''})"

    left, right = st.columns([4, 1], vertical_alignment="bottom")
    if len(documents) > 1:
        st.session_state[key] = workspace.selected

        def picked() -> None:
            workspace.selected = st.session_state[key]

        left.selectbox("Document", list(documents), key=key, on_change=picked, format_func=label)
    else:  # the uploader is empty after a visit to another page: say which document is open
        left.markdown(f"**Document:** {label(document.digest)}")
    right.button("Close document", key=f"{key}_close", on_click=workspace.remove, args=(document.digest,),
                 icon=":material/close:", help="Its results stay in History")
    return document


def page_strip(document: Document, index: int, page_key: str, marks: dict[int, str],
               pending: Collection[int] = (), suffix: str = "") -> None:
    """Thumbnails of the pages around the one shown; ✓ has a result, ✗ failed, … is being run. A click
    shows that page, "Pages to run" stays as it is."""
    count = document.page_count
    start = max(0, min(index - STRIP_PAGES // 2, count - STRIP_PAGES))
    pages = range(start, min(count, start + STRIP_PAGES))

    def show(page: int) -> None:
        st.session_state[page_key] = page + 1

    columns = st.columns(STRIP_PAGES)
    for column, page in zip(columns, pages):
        with column:
            image = thumbnail(document.digest, page, document)
            if image is not None:
                st.image(image, width="stretch")
            mark = marks.get(page) or ("…" if page in pending else "")
            st.button(f"{page + 1} {mark}".strip(), key=f"{page_key}_thumb_{page}{suffix}", on_click=show, args=(page,),
                      type="primary" if page == index else "secondary", width="stretch")
    if count > STRIP_PAGES:
        st.caption(f"Pages {pages.start + 1}–{pages.stop} of {count}; ✓ read, ✗ failed, … being read")
