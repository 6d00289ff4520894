"""History page: every stored result, newest first; filter, search, reopen with the page, export, delete."""
from __future__ import annotations

import datetime as dt

import streamlit as st

from pages.ui.common import TASK_LABELS, get_loader, require_app_shell
from pages.ui.stored import get_store, result_label, show_stored, stored_page_view
from pages.ui.workspace import get_workspace
from utils.documents.export import FORMATS, document_text, document_zip, download_name, page_text
from utils.messages import one_line
from utils.store import Store, StoredResult

ALL = "All"
PAGE_SIZES = (50, 200, 1000)
MIME = {"txt": "text/plain", "md": "text/markdown", "json": "application/json", "pdf": "application/pdf",
        "zip": "application/zip"}


def _filters(store: Store) -> dict:
    facets = store.facets()
    cols = st.columns([3, 2, 2, 2])
    document = cols[0].selectbox("Document", [ALL, *facets["document_name"]], key="history_document")
    model = cols[1].selectbox("Model", [ALL, *facets["model"]], key="history_model")
    task = cols[2].selectbox("Task", [ALL, *facets["task"]], key="history_task",
                             format_func=lambda t: TASK_LABELS.get(t, t))
    days = cols[3].date_input("Date", value=[], key="history_dates", help="One day or a range")
    search = st.text_input("Search in the text", key="history_search", placeholder="words that must all occur")
    since = until = None
    if isinstance(days, (tuple, list)) and days:
        since, until = days[0], days[-1]
    elif isinstance(days, dt.date):
        since = until = days
    return {"document": None if document == ALL else document, "model": None if model == ALL else model,
            "task": None if task == ALL else task, "since": since, "until": until, "search": search or None}


def _pdf_of(store: Store, results: list[StoredResult]):
    """A callable for a download button: the searchable PDF is only drawn when asked for."""
    def build() -> bytes:
        from utils.documents.searchable_pdf import document_pdf

        first = results[0]
        document = store.open_document(first.key.digest, first.document_name, first.render_dpi)
        if document is None:
            raise FileNotFoundError("the source document is no longer kept")
        return document_pdf(document, [r.result for r in results])
    return build


def _exports(store: Store, stored: StoredResult, kept: bool) -> None:
    result = stored.result
    key = stored.key
    prompt = stored.options.prompt if key.task == "prompt" else None
    page_count = (kept_doc.page_count if (kept_doc := store.kept_document(key.digest)) else None)

    def name(pages: list[int], fmt: str) -> str:
        return download_name(stored.document_name, pages, key.task, key.model, fmt, page_count)

    st.markdown("**This page**")
    cols = st.columns(len(FORMATS) + 1)
    for col, fmt in zip(cols, FORMATS):
        col.download_button(f"⬇ {fmt.upper()}", page_text(result, fmt, correction=stored.correction, prompt=prompt),
                            file_name=name([key.page], fmt), mime=MIME[fmt], key=f"history_page_{fmt}")
    cols[-1].download_button("⬇ PDF (searchable)", _pdf_of(store, [stored]), disabled=not kept,
                             file_name=name([key.page], "pdf"), mime=MIME["pdf"], key="history_page_pdf",
                             help=None if kept else "the source document is no longer kept")
    pages = store.document_results(stored.key)
    if len(pages) < 2:
        return
    st.markdown(f"**The whole document** ({len(pages)} pages with {stored.key.model}, newest result of each)")
    results = [p.result for p in pages]
    corrections = {p.key.page: p.correction for p in pages if p.correction is not None}
    numbers = [p.key.page for p in pages]
    cols = st.columns(len(FORMATS) + 2)
    for col, fmt in zip(cols, FORMATS):
        col.download_button(f"⬇ {fmt.upper()}", document_text(results, fmt, corrections=corrections, prompt=prompt),
                            file_name=name(numbers, fmt), mime=MIME[fmt], key=f"history_doc_{fmt}")
    cols[-2].download_button("⬇ ZIP (all)", lambda: document_zip(stored.document_name, results,
                                                                 corrections=corrections, prompt=prompt,
                                                                 page_count=page_count),
                             file_name=name(numbers, "zip"), mime=MIME["zip"], key="history_doc_zip")
    cols[-1].download_button("⬇ PDF (searchable)", _pdf_of(store, pages), disabled=not kept,
                             file_name=name(numbers, "pdf"), mime=MIME["pdf"], key="history_doc_pdf")


def _delete(store: Store, stored: StoredResult, shown: list[int], total: int) -> None:
    left, right = st.columns([1, 2])
    if left.button("Delete this result", key="history_delete_one", icon=":material/delete:"):
        store.delete([stored.id])
        st.session_state.pop("history_open", None)
        st.toast(f"Deleted {result_label(stored)}")
        st.rerun()
    with right.expander(f"Delete the {len(shown)} result(s) listed"):
        confirmed = st.checkbox(f"Yes, delete {len(shown)} result(s)" + (f" of {total}" if total > len(shown) else ""),
                                key="history_delete_confirm")
        if st.button("Delete them", key="history_delete_many", disabled=not confirmed, type="primary"):
            deleted = store.delete(shown)
            st.session_state.pop("history_open", None)
            st.session_state.pop("history_delete_confirm", None)
            st.toast(f"Deleted {deleted} result(s)")
            st.rerun()


def _open_in_workspace(store: Store, stored: StoredResult) -> None:
    workspace = get_workspace()
    ids = [p.id for p in store.document_results(stored.key)] or [stored.id]
    problems = workspace.open_stored(store, ids)
    if problems:
        st.error(problems[0])
        return
    document = workspace.document
    if document is not None and document.page_count > 1:
        st.session_state[f"ocr_page_{document.digest[:16]}"] = stored.key.page + 1
    st.session_state["ocr_task"] = stored.key.task
    if stored.key.model in get_loader().settings.models:
        st.session_state["model"] = stored.key.model
    if stored.options.prompt:
        st.session_state["ocr_prompt"] = stored.options.prompt
    st.switch_page("pages/ocr.py")


def _chats(store: Store) -> None:
    """Kept conversations: reopened on the Chat page, where they continue."""
    chats = store.chats.recent()
    if not chats:
        return
    with st.expander(f"Chats ({len(chats)})", expanded=True):
        by_id = {c.id: c for c in chats}
        chosen = st.selectbox("Chat", list(by_id), key="history_chat", format_func=lambda i: (
            f"{dt.datetime.fromtimestamp(by_id[i].updated_at):%Y-%m-%d %H:%M} · {by_id[i].document_name} · "
            f"{by_id[i].model} · {len(by_id[i].turns) // 2} turn(s) · {by_id[i].title}"))
        if st.button("Open in Chat", key="history_chat_open", icon=":material/chat:"):
            st.session_state["chat_reopen"] = chosen
            st.switch_page("pages/chat.py")


def main() -> None:
    require_app_shell("pages/history.py")
    st.title("History")
    try:
        store = get_store()
    except Exception as exc:  # an unreadable database is a message, not a traceback
        st.error(f"The results store cannot be opened: {one_line(exc)}")
        return
    _chats(store)
    if store.count() == 0:
        st.info("No results stored yet. Pages read on the OCR and Batch pages (and by `cli.py batch`) appear here.")
        return
    filters = _filters(store)
    limit = st.session_state.get("history_limit", PAGE_SIZES[0])
    total = store.count(**filters)
    rows = store.results(**filters, limit=limit)
    shown = f"{total} result(s)" + (f", the newest {len(rows)} listed" if total > len(rows) else "")
    st.caption(f"{shown} · store: {store.path}")
    if not rows:
        st.info("Nothing matches these filters.")
        return
    st.dataframe([{"when": r.created_at.astimezone().strftime("%Y-%m-%d %H:%M:%S"), "document": r.document_name,
                   "page": r.key.page + 1, "model": r.key.model, "task": r.key.task, "chars": r.chars,
                   "seconds": round(r.seconds, 2) if r.seconds is not None else None,
                   "corrected": "✎" if r.corrected else "", "text": r.preview}
                  for r in rows], hide_index=True, width="stretch", height=min(38 + 35 * len(rows), 320))
    if total > len(rows):
        st.selectbox("List at most", PAGE_SIZES, key="history_limit")
    by_id = {r.id: r for r in rows}
    if st.session_state.get("history_open") not in by_id:
        st.session_state["history_open"] = rows[0].id
    chosen = st.selectbox("Open a result", list(by_id), key="history_open", format_func=lambda i: (
        f"{by_id[i].created_at.astimezone():%Y-%m-%d %H:%M} · {by_id[i].document_name}, page {by_id[i].key.page + 1}"
        f" · {by_id[i].key.model} · {by_id[i].key.task}"))
    stored = store.get(chosen)
    if stored is None:
        st.warning("That result was deleted meanwhile.")
        return
    st.subheader(result_label(stored))
    when = stored.created_at.astimezone().strftime("%Y-%m-%d %H:%M:%S")
    job = f" · batch job {stored.job_id}" if stored.job_id else ""
    prompt = f" · prompt: {stored.options.prompt}" if stored.options.prompt else ""
    st.caption(f"Recognised {when}{job}{prompt}")
    for event in stored.events:
        st.warning(f"Recovery while this page ran: {event.get('kind')} → {event.get('action')}")
    image = stored_page_view(str(store.path), stored.id)
    kept = image is not None
    if st.button("Open in the OCR workspace", key="history_to_ocr", icon=":material/open_in_new:", disabled=not kept,
                 help="The document and every page of it read this way, to read on, correct and run again"
                 if kept else "The source document is no longer kept"):
        _open_in_workspace(store, stored)
    show_stored(store, stored, image, key=f"history_{stored.id}",
                missing_image="The page image is no longer kept (store.max_files_mb); the text and boxes are.")
    st.subheader("Export")
    _exports(store, stored, kept)
    st.subheader("Delete")
    _delete(store, stored, [r.id for r in rows], total)


main()
