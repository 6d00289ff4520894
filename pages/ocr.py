"""OCR page: the workspace's documents, pick pages, run the chosen model (in the background, with Stop),
read text/markdown/JSON, correct the text, download.

The title and the uploader are drawn before the engine's modules are imported: on a fresh server the
page shows at once, and a file can be dropped while the rest loads.
"""
from __future__ import annotations

from collections.abc import Callable

import streamlit as st

from pages.ui.shell import draw_uploader, follow_later, require_app_shell

require_app_shell("pages/ocr.py")
st.title("OCR")
_uploaded = draw_uploader("ocr_upload", "Scans or PDFs")

from models.contract import PageResult, ResultKey, RunOptions  # noqa: E402
from pages.ui.common import TASK_LABELS, current_model, get_loader, model_status, page_view  # noqa: E402
from pages.ui.result_view import show_result  # noqa: E402
from pages.ui.run import Entry, RunJob  # noqa: E402
from pages.ui.session import (  # noqa: E402
    MIME,
    document_picker,
    page_strip,
    restore_offer,
    show_notes,
    show_rejected,
    store_or_none,
)
from pages.ui.workspace import Workspace, flag, get_workspace, kept, set_flag  # noqa: E402
from utils.documents.export import FORMATS, document_text, document_zip, download_name, page_text  # noqa: E402
from utils.documents.reader import Document, DocumentError  # noqa: E402
from utils.engine.runner import result_key  # noqa: E402

MAX_ERRORS_SHOWN = 5
DEFAULT_PROMPT = "Describe this document."
# Names for the language codes an OCR engine offers (Tesseract's); other codes are shown as they are.
LANGUAGE_NAMES = {"eng": "English", "rus": "Russian", "ukr": "Ukrainian", "bel": "Belarusian", "kaz": "Kazakh",
                  "deu": "German", "fra": "French", "spa": "Spanish", "ita": "Italian", "por": "Portuguese",
                  "pol": "Polish", "chi_sim": "Chinese (simplified)", "jpn": "Japanese"}


def _keys(document: Document) -> tuple[str, str]:
    """The widget keys of the page picker and of "Pages to run": one pair per document, so each document
    keeps its own."""
    return f"ocr_page_{document.digest[:16]}", f"ocr_pages_{document.digest[:16]}"


def _languages_key(document: Document) -> str:
    return f"ocr_languages_{document.digest[:16]}"


def _languages(document: Document, status) -> str | None:
    """The languages chosen for this document, as the engine takes them ("rus+eng"); None: the engine's own."""
    offered = status.availability.languages
    chosen = st.session_state.get(_languages_key(document)) or []
    chosen = [code for code in chosen if code in offered]
    return "+".join(chosen) if chosen else None


def _language_picker(where, document: Document, status) -> None:
    offered = list(status.availability.languages)
    default = status.availability.default_languages or "+".join(offered)
    where.multiselect(
        "Languages", offered, format_func=lambda code: f"{LANGUAGE_NAMES.get(code, code)} ({code})",
        key=kept(_languages_key(document), [], lambda v: isinstance(v, list) and all(c in offered for c in v)),
        placeholder=f"Automatic: {default}",
        help=f"The languages {status.label} reads in this document, in order of priority. Automatic: {default}, "
             "with each page's script checked, so that English pages get no Cyrillic look-alikes.")


def _options(document: Document, status) -> RunOptions:
    return RunOptions(prompt=_prompt(), languages=_languages(document, status))


def _prompt() -> str | None:
    return st.session_state.get("ocr_prompt", DEFAULT_PROMPT) if st.session_state.get("ocr_task") == "prompt" \
        else None


def _start(workspace: Workspace) -> None:
    """Run's callback: it runs before the page is drawn, so the page already shows Run disabled, Stop,
    and the first page of the run."""
    document = workspace.document
    if document is None or workspace.running("ocr") is not None:
        return
    model = current_model()
    status = model_status(model)
    page_key, pages_key = _keys(document)
    spec = st.session_state.get(pages_key, "1") if document.page_count > 1 else "1"
    try:
        selection = document.select(spec)
    except DocumentError:
        return  # Run is disabled with the reason shown while the selection is invalid
    task = st.session_state.get("ocr_task", status.tasks[0])
    job = RunJob(get_loader(), store_or_none(workspace), document, [(model, selection.indices)], task,
                 _options(document, status), warnings=selection.warnings, kind="ocr",
                 labels={model: status.label})
    workspace.jobs.append(job)
    if document.page_count > 1:
        st.session_state[page_key] = selection.indices[0] + 1  # show the first page that runs


def _why_not(status, job: RunJob | None, document: Document, spec: str) -> str | None:
    """Why Run is disabled, in words (None: it is not)."""
    if job is not None:
        return "A run is going on: wait for it, or stop it." if not job.stop.is_set() else \
            "Stopping after the page being read…"
    if not status.availability.available:
        return f"{status.label} is not available here: {status.availability.reason or status.availability.status}."
    try:
        document.select(spec)
    except DocumentError as exc:
        return str(exc)
    return None


def _same_run(key: ResultKey, like: ResultKey) -> bool:
    return (key.digest, key.model, key.task, key.variant) == (like.digest, like.model, like.task, like.variant)


def _downloads(document: Document, entries: dict[int, Entry], task: str, model: str, prompt: str | None,
               suffix: str) -> None:
    """The files are made when a button is clicked (not on every rerun), and a click does not rerun the page."""
    pages = sorted(entries)
    results: list[PageResult] = [result for i in pages if (result := entries[i].result) is not None]
    corrections = {i: fix for i in pages if (fix := entries[i].correction) is not None}

    def body(fmt: str) -> Callable[[], str]:
        if len(results) > 1:
            return lambda: document_text(results, fmt, corrections=corrections, prompt=prompt)
        return lambda: page_text(results[0], fmt, correction=corrections.get(pages[0]), prompt=prompt)

    cols = st.columns(len(FORMATS) + 1)
    for col, fmt in zip(cols, FORMATS):
        col.download_button(f"⬇ {fmt.upper()}", body(fmt), mime=MIME[fmt], key=f"dl_{fmt}{suffix}", on_click="ignore",
                            file_name=download_name(document.name, pages, task, model, fmt, document.page_count))
    if len(results) > 1:
        cols[-1].download_button(
            "⬇ ZIP (all pages)",
            lambda: document_zip(document.name, results, corrections=corrections, prompt=prompt,
                                 page_count=document.page_count),
            file_name=download_name(document.name, pages, task, model, "zip", document.page_count),
            mime="application/zip", key=f"dl_zip{suffix}", on_click="ignore")


def main() -> None:
    workspace = get_workspace()
    workspace.collect()
    store = store_or_none(workspace)
    workspace.sync_uploads("ocr_upload", *_uploaded, store)
    show_rejected(workspace, "ocr_upload")
    restore_offer(workspace, store)
    show_notes(workspace)
    if workspace.document is None:
        st.caption("Upload one or more documents to start.")
        return
    document = document_picker(workspace, "ocr_document")
    status = model_status(current_model())

    page_key, pages_key = _keys(document)
    top = st.columns([1, 1, 2, 2])
    task = top[0].selectbox("Task", status.tasks, format_func=lambda t: TASK_LABELS.get(t, t),
                            key=kept("ocr_task", status.tasks[0], lambda t: t in status.tasks))
    index, spec = 0, "1"
    if document.page_count > 1:
        count = document.page_count
        index = top[1].number_input(f"Page (of {count})", 1, count,
                                    key=kept(page_key, 1, lambda v: isinstance(v, int) and 1 <= v <= count)) - 1
        # "Pages to run" follows the page shown until the user types into it; from then on it is theirs.
        typed = f"{pages_key}_typed"
        if not flag(typed):
            st.session_state[pages_key] = str(index + 1)
        spec = top[2].text_input("Pages to run", key=kept(pages_key, str(index + 1), lambda v: isinstance(v, str)),
                                 on_change=set_flag, args=(typed,), help='Like "1-3,7"; empty = all pages')
    if status.availability.languages:
        _language_picker(top[3], document, status)
    prompt = None
    if task == "prompt":
        prompt = st.text_area("Prompt", key=kept("ocr_prompt", DEFAULT_PROMPT, lambda v: isinstance(v, str)))

    view = _View(workspace, store, status, document, index, spec, task, prompt, _options(document, status))
    # Each part has a second slot, empty until a run's end is drawn in place: the browser keeps every
    # element a script run sent and did not replace, so the end is drawn afresh in the second slot and
    # the first is emptied, rather than drawn over the first (where a shorter drawing would leave some
    # of the first behind, such as the Stop button).
    controls, controls_end, panel, body, body_end = (st.empty() for _ in range(5))

    def draw(first: bool) -> None:
        if not first:
            controls.empty()
            body.empty()
        with (controls if first else controls_end).container():
            view.controls("" if first else "_f")
        with (body if first else body_end).container():
            view.body("" if first else "_f")
        workspace.autosave(store)

    job = workspace.running("ocr")  # taken before drawing: a run that ends meanwhile is still followed
    draw(first=True)
    if job is not None:
        # When the run ends, its results are drawn in place, in this same script run: no second run of the
        # whole app before the user sees them (the keys change so no widget is drawn twice).
        def finish() -> None:
            workspace.collect()
            draw(first=False)

        follow_later(job, panel, job.labels, finish=finish)


class _View:
    """The parts of the OCR page a run changes: Run/Stop and the page with its results."""

    def __init__(self, workspace: Workspace, store, status, document: Document, index: int, spec: str, task: str,
                 prompt: str | None, options: RunOptions):
        self.workspace, self.store, self.status, self.document = workspace, store, status, document
        self.index, self.spec, self.task, self.prompt, self.options = index, spec, task, prompt, options

    def controls(self, suffix: str) -> None:
        job = self.workspace.running("ocr")
        reason = _why_not(self.status, job, self.document, self.spec)
        buttons = st.columns([2, 1, 5], vertical_alignment="center")
        buttons[0].button(f"Run {self.status.label}", type="primary", disabled=reason is not None,
                          key=f"ocr_run{suffix}", on_click=_start, args=(self.workspace,), width="stretch")
        if job is not None:
            buttons[1].button("Stop run", key=f"ocr_stop{suffix}", on_click=job.stop.set, disabled=job.stop.is_set(),
                              icon=":material/stop_circle:",
                              help="Stop after the page being read; finished pages are kept")
        if reason is not None:
            buttons[2].caption(reason)

    def body(self, suffix: str) -> None:
        workspace, document, index, status = self.workspace, self.document, self.index, self.status
        model = status.name
        job = workspace.running("ocr")
        like = result_key(document, index, model, self.task, self.options)
        outcomes = {key.page: entry for key, entry in workspace.entries.items() if _same_run(key, like)}
        pending = set(job.plan[0][1]) if job is not None and job.document.digest == document.digest else set()
        page_key, _ = _keys(document)
        if document.page_count > 1:
            page_strip(document, index, page_key, {page: "✓" if e.result else "✗" for page, e in outcomes.items()},
                       pending - set(outcomes), suffix)
        failed = [entry.error for _, entry in sorted(outcomes.items()) if entry.error]
        for error in failed[:MAX_ERRORS_SHOWN]:
            st.error(error)
        if len(failed) > MAX_ERRORS_SHOWN:
            st.error(f"…and {len(failed) - MAX_ERRORS_SHOWN} more page(s) failed")
        shown = outcomes.get(index)
        if shown is not None and shown.result is not None:
            def correct(text: str, entry: Entry = shown) -> None:
                workspace.correct(entry, text, self.store)

            show_result(shown.result, page_view(document, index), f"ocr_{shown.uid}{suffix}", group="ocr",
                        correction=shown.correction, prompt=self.prompt, wall_seconds=shown.wall_seconds,
                        on_correct=correct)
        elif shown is None:  # a failed page's error is listed above; rendering it again would repeat it
            view = page_view(document, index)
            if view is not None:
                state = "being read" if index in pending else f"not run yet with {status.label}" + (
                    f" in {self.options.languages}" if self.options.languages else "")
                st.image(view.jpeg, caption=f"Page {index + 1} — {state}", width="stretch")
        done = {page: entry for page, entry in outcomes.items() if entry.result is not None}
        if done:
            st.subheader("Download")
            corrected = sum(entry.correction is not None for entry in done.values())
            st.caption(f"{len(done)} page(s) of {document.name} recognised with {model}"
                       + (f"; {corrected} corrected by you" if corrected else "")
                       + (f"; {len(failed)} page(s) failed and are not in the files" if failed else ""))
            _downloads(document, done, self.task, model, self.prompt, suffix)

main()
