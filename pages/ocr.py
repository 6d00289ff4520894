"""OCR page: upload, pick pages, run the chosen model, read text/markdown/JSON, download."""
from __future__ import annotations

from pathlib import Path

import streamlit as st

from models.contract import RunOptions
from pages.ui.common import (
    TASK_LABELS,
    UPLOAD_TYPES,
    document_key,
    draw_boxes,
    get_loader,
    model_catalog,
    open_upload,
    page_image,
    require_app_shell,
)
from utils.documents.export import FORMATS, document_text, document_zip, page_filename, page_text
from utils.documents.reader import parse_page_selection
from utils.messages import one_line

MIME = {"txt": "text/plain", "md": "text/markdown", "json": "application/json"}


def _results() -> dict:
    # {(document key, model, task): {page index: PageResult}} — survives reruns and model switches.
    return st.session_state.setdefault("ocr_results", {})


def _run(document, indices, model, task, options) -> None:
    loader = get_loader()
    store = _results().setdefault((document_key(document), model, task), {})
    progress = st.progress(0.0, text=f"Running {model}…")
    stream_box = st.empty()
    for done, index in enumerate(indices):
        progress.progress(done / len(indices), text=f"{model}: page {index + 1} ({done + 1} of {len(indices)})")
        image = page_image(document, index)
        if image is None:
            return
        streamed: list[str] = []

        def show_token(piece: str) -> None:
            streamed.append(piece)
            stream_box.code("".join(streamed)[-3000:], language=None)

        try:
            result = loader.run(model, image, task, options, on_token=show_token, page=index, source=document.name)
        except Exception as exc:  # the message is for the user; earlier pages' results are kept
            progress.empty()
            stream_box.empty()
            st.error(f"{document.name}, page {index + 1}: {one_line(exc)}")
            return
        result.warnings = document.warnings + result.warnings
        store[index] = result
    progress.progress(1.0, text=f"{model}: done")
    stream_box.empty()


def _show_result(document, index, result) -> None:
    image = page_image(document, index)
    cols = st.columns(5)
    cols[0].metric("Device", f"{result.device}" + (f" · {result.dtype}" if result.dtype else ""))
    cols[1].metric("Profile", result.profile)
    cols[2].metric("Inference", f"{result.seconds:.2f} s")
    cols[3].metric("Load", f"{result.load_seconds:.2f} s" if result.load_seconds is not None else "cached")
    cols[4].metric("Blocks", len(result.blocks))
    for warning in result.warnings:
        st.warning(warning)
    left, right = st.columns([1, 1])
    with left:
        if image is not None:
            st.image(draw_boxes(image, result.blocks), caption=f"Page {index + 1} with {len(result.blocks)} boxes",
                     width="stretch")
    with right:
        text_tab, md_tab, json_tab = st.tabs(["Text", "Markdown", "JSON"])
        with text_tab:
            st.text_area("Recognised text", result.text, height=520, key=f"text_{result.model}_{result.task}_{index}")
        with md_tab:
            st.markdown(result.markdown or result.text)
        with json_tab:
            st.json(result.model_dump(mode="json"), expanded=1)


def _downloads(document, pages: dict) -> None:
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

    if st.button(f"Run {status.label}", type="primary", disabled=not status.availability.available):
        try:
            indices = parse_page_selection(selection, document.page_count)
        except ValueError as exc:
            st.error(str(exc))
        else:
            _run(document, indices, model, task, RunOptions(prompt=prompt))

    pages = _results().get((document_key(document), model, task), {})
    if index in pages:
        _show_result(document, index, pages[index])
    else:
        image = page_image(document, index)
        if image is not None:
            st.image(image, caption=f"Page {index + 1} — not run yet with {status.label}", width="stretch")
    if pages:
        st.subheader("Download")
        st.caption(f"{len(pages)} page(s) of {document.name} recognised with {model}")
        _downloads(document, pages)


main()
