"""OCR page: upload, pick pages, run the chosen model, read text/markdown/JSON, download."""
from __future__ import annotations

from pathlib import Path

import streamlit as st

from models.contract import PageResult, ResultKey, RunOptions
from pages.ui.common import (
    TASK_LABELS,
    UPLOAD_TYPES,
    TokenView,
    get_loader,
    model_catalog,
    open_upload,
    page_image,
    require_app_shell,
)
from pages.ui.stored import keep, show_page_result
from utils.documents.export import FORMATS, document_text, document_zip, page_filename, page_text
from utils.documents.reader import Document, DocumentError, PageSelection
from utils.engine.loader import ModelUnavailable
from utils.engine.runner import PageOutcome, result_key, run_pages
from utils.messages import one_line

MAX_ERRORS_SHOWN = 5
MIME = {"txt": "text/plain", "md": "text/markdown", "json": "application/json"}


def _results() -> dict[ResultKey, PageOutcome]:
    # Every page run in this session, by ResultKey: survives reruns and model switches.
    return st.session_state.setdefault("ocr_results", {})


def _same_run(key: ResultKey, like: ResultKey) -> bool:
    return (key.digest, key.model, key.task, key.variant) == (like.digest, like.model, like.task, like.variant)


def _outcomes(like: ResultKey) -> dict[int, PageOutcome]:
    """{page: outcome} of this document with this model, task and options."""
    return {key.page: outcome for key, outcome in _results().items() if _same_run(key, like)}


def _run(document: Document, selection: PageSelection, model: str, task: str, options: RunOptions) -> None:
    store = _results()
    progress = st.progress(0.0, text=f"Running {model}…")
    view = TokenView(st.empty(), tail=3000)

    def started(done: int, total: int, index: int) -> None:
        view.reset()
        progress.progress(done / total, text=f"{model}: page {index + 1} ({done + 1} of {total})")

    try:
        for outcome in run_pages(get_loader(), document, selection.indices, model, task, options,
                                 on_page=started, on_token=view, warnings=selection.warnings):
            keep(outcome, document, options)  # in the results store before it is shown
            store[outcome.key] = outcome  # a failed page keeps its error; the other pages still run
    except ModelUnavailable as exc:
        st.error(f"{document.name}: {one_line(exc)}")
    progress.empty()
    view.placeholder.empty()


def _downloads(document: Document, pages: dict[int, PageResult]) -> None:
    stem = Path(document.name).stem
    ordered = [pages[i] for i in sorted(pages)]
    cols = st.columns(len(FORMATS) + 1)
    for col, fmt in zip(cols, FORMATS):
        name = f"{stem}_{ordered[0].model}.{fmt}" if len(ordered) > 1 else page_filename(stem, ordered[0], fmt)
        body = document_text(ordered, fmt) if len(ordered) > 1 else page_text(ordered[0], fmt)
        col.download_button(f"⬇ {fmt.upper()}", body, file_name=name, mime=MIME[fmt], key=f"dl_{fmt}")
    if len(ordered) > 1:
        cols[-1].download_button("⬇ ZIP (all pages)", document_zip(document.name, ordered),
                                 file_name=f"{stem}_{ordered[0].model}.zip", mime="application/zip", key="dl_zip")


def main() -> None:
    require_app_shell("pages/ocr.py")
    st.title("OCR")
    catalog = {s.name: s for s in model_catalog()}
    model = st.session_state.get("model")
    if model not in catalog:
        st.info("No model is available. Open the System page to see why.")
        return
    status = catalog[model]

    uploads = st.file_uploader("Scans or PDFs", type=UPLOAD_TYPES, accept_multiple_files=True,
                               help="PNG, JPEG, TIFF, WebP, BMP, GIF or PDF")
    if not uploads:
        st.caption("Upload one or more documents to start.")
        return
    documents = [d for d in (open_upload(u) for u in uploads) if d is not None]
    if not documents:
        return
    names = [d.name for d in documents]
    document = documents[names.index(st.selectbox("Document", names))] if len(documents) > 1 else documents[0]

    top = st.columns([1, 1, 2])
    task = top[0].selectbox("Task", status.tasks, format_func=lambda t: TASK_LABELS.get(t, t))
    index = 0
    if document.page_count > 1:
        index = top[1].number_input(f"Page (of {document.page_count})", 1, document.page_count, 1) - 1
        selection = top[2].text_input("Pages to run", f"{index + 1}", help='Like "1-3,7"; empty = all pages')
    else:
        selection = "1"
    prompt = st.text_area("Prompt", "Describe this document.") if task == "prompt" else None

    options = RunOptions(prompt=prompt)
    if st.button(f"Run {status.label}", type="primary", disabled=not status.availability.available):
        try:
            chosen = document.select(selection)
        except DocumentError as exc:
            st.error(str(exc))
        else:
            _run(document, chosen, model, task, options)

    outcomes = _outcomes(result_key(document, index, model, task, options))
    pages = {page: o.result for page, o in sorted(outcomes.items()) if o.result is not None}
    failed = [o.error for _, o in sorted(outcomes.items()) if o.error]
    for error in failed[:MAX_ERRORS_SHOWN]:
        st.error(error)
    if len(failed) > MAX_ERRORS_SHOWN:
        st.error(f"…and {len(failed) - MAX_ERRORS_SHOWN} more page(s) failed")
    shown = outcomes.get(index)
    if shown is not None and shown.result is not None:
        show_page_result(shown.result, page_image(document, index), key=f"{model}_{task}_{index}")
    elif shown is None:  # a failed page's error is listed above; rendering it again would repeat it
        image = page_image(document, index)
        if image is not None:
            st.image(image, caption=f"Page {index + 1} — not run yet with {status.label}", width="stretch")
    if pages:
        st.subheader("Download")
        st.caption(f"{len(pages)} page(s) of {document.name} recognised with {model}"
                   + (f"; {len(failed)} page(s) failed and are not in the files" if failed else ""))
        _downloads(document, pages)


main()
