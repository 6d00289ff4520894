"""Batch page: many files or zips (folders inside), one or several models, one task; a resumable job
whose progress, speed and finished pages show while it runs."""
from __future__ import annotations

import streamlit as st

from pages.ui.common import TASK_LABELS, UPLOAD_TYPES, get_loader, model_catalog, model_label, require_app_shell
from pages.ui.jobs import job_threads, start_job
from pages.ui.stored import get_store, show_page_result, stored_page_image
from utils.jobs.engine import available_cores, create_job, prepare
from utils.jobs.inputs import InputError, Source, expand_upload
from utils.jobs.outputs import job_zip
from utils.messages import one_line
from utils.store import Job, Store

STATUS = {"pending": "waiting", "running": "running", "done": "done", "cancelled": "cancelled", "failed": "failed"}


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else \
        f"{seconds // 60}:{seconds % 60:02d}"


def _new_job(store: Store) -> None:
    catalog = {s.name: s for s in model_catalog()}
    ready = [name for name, s in catalog.items() if s.availability.available]
    uploads = st.file_uploader("Documents, or zips of them (folders inside are kept)", type=[*UPLOAD_TYPES, "zip"],
                               accept_multiple_files=True, key="batch_upload")
    current = st.session_state.get("model")
    cols = st.columns([3, 2, 2, 1])
    models = cols[0].multiselect("Models", ready, default=[current] if current in ready else ready[:1],
                                 format_func=lambda n: model_label(catalog[n]), key="batch_models")
    tasks = [t for t in (catalog[models[0]].tasks if models else ()) if all(t in catalog[m].tasks for m in models)]
    task = cols[1].selectbox("Task", tasks or ["text"], format_func=lambda t: TASK_LABELS.get(t, t), key="batch_task")
    pages = cols[2].text_input("Pages of each document", "", placeholder="all", key="batch_pages",
                               help='Like "1-3,7"; empty = every page')
    workers = cols[3].number_input("Workers", 1, 4 * available_cores(), available_cores(), key="batch_workers",
                                   help="Worker processes for classic engines; a model with weights uses one")
    if not st.button("Start the job", type="primary", key="batch_start", disabled=not uploads or not models):
        return
    settings = get_loader().settings
    max_bytes = int(settings.documents.max_file_mb * 2**20)
    sources: list[Source] = []
    for upload in uploads or []:
        try:
            found, notes = expand_upload(upload.name, upload.getvalue(), max_bytes)
        except InputError as exc:
            st.error(str(exc))
            continue
        sources += found
        for note in notes:
            st.warning(note)
    if not sources:
        st.error("No images or PDFs to read in these uploads.")
        return
    # Uploads are kept in the store (pinned until the job is done): after a restart they are the only copy.
    documents = prepare(sources, settings, pages.strip() or None,
                        keep=lambda document, name: store.keep(document, name, pin=True))
    for document in documents:
        if document.error:
            st.error(document.error)
    if all(d.error for d in documents):
        return
    job_id = create_job(store, documents, models, task, pages=pages.strip() or None)
    start_job(store, job_id, get_loader(), int(workers))
    st.session_state["batch_job"] = job_id


def _job_label(job: Job) -> str:
    """Stable while the job runs: a selectbox whose labels change forgets the user's choice."""
    return f"#{job.id} {job.name} · {', '.join(job.models)} · {job.task} · {job.created_at.astimezone():%Y-%m-%d %H:%M}"


def _job_panel(store: Store, job_id: int) -> None:
    job = store.jobs.get(job_id)
    if job is None:
        st.warning("This job was deleted.")
        return
    thread = job_threads().get(job_id)
    running_here = thread is not None and thread.alive
    counts = store.jobs.counts(job_id)
    fraction = counts.finished / counts.total if counts.total else 1.0
    progress = thread.progress if thread is not None else None
    rate = progress.pages_per_second if progress is not None else None
    speed = f" · {rate:.2f} pages/s · ETA {_duration(progress.eta_seconds)}" if running_here and rate and progress \
        else ""
    errors = f" · {counts.errors} failed" if counts.errors else ""
    st.progress(fraction, text=f"{counts.finished} / {counts.total} pages{errors}{speed}")
    state = "interrupted" if job.status == "running" and not job.active else STATUS.get(job.status, job.status)
    st.caption(f"Job #{job.id} · {state} · task {job.task} · models {', '.join(job.models)}"
               + (f" · pages {job.pages}" if job.pages else ""))
    if job.error:
        st.error(job.error)
    if thread is not None and thread.error:
        st.error(thread.error)
    for document in store.jobs.documents(job_id):
        if document.error:
            st.warning(document.error)
    cols = st.columns(3)
    if thread is not None and running_here:
        stopping = thread.stop.is_set()
        if cols[0].button("Cancelling…" if stopping else "Cancel", key=f"batch_cancel_{job_id}", icon=":material/stop:",
                          disabled=stopping):
            thread.stop.set()
            st.rerun()
    elif counts.pending and not job.active:
        if cols[0].button(f"Resume ({counts.pending} pages left)", key=f"batch_resume_{job_id}", type="primary",
                          icon=":material/play_arrow:"):
            start_job(store, job_id, get_loader(), st.session_state.get("batch_workers"))
            st.rerun()
    if counts.done:
        cols[1].download_button("⬇ ZIP of the results", lambda: job_zip(store, job_id), file_name=f"batch_{job_id}.zip",
                                mime="application/zip", key=f"batch_zip_{job_id}",
                                help="Per document: one txt/md/json file per page, a combined markdown, a searchable "
                                     "PDF; and summary.csv")
    finished = store.jobs.pages(job_id, newest_first=True, limit=200)
    finished = [p for p in finished if p.status != "pending"]
    if not finished:
        st.caption("No page finished yet.")
        return
    names = {d.position: d.name for d in store.jobs.documents(job_id)}
    st.dataframe([{"document": names.get(p.position, "?"), "page": p.page + 1, "model": p.model, "status": p.status,
                   "seconds": round(p.seconds, 2) if p.seconds is not None else None, "error": p.error or ""}
                  for p in finished], hide_index=True, width="stretch", height=min(38 + 35 * len(finished), 280))
    done = [p for p in finished if p.result_id is not None]
    if not done:
        return
    labels = {p.result_id: f"{names.get(p.position, '?')}, page {p.page + 1} · {p.model}" for p in done}
    chosen = st.selectbox("Open a finished page", list(labels), format_func=labels.__getitem__,
                          key=f"batch_open_{job_id}")
    stored = store.get(chosen) if chosen is not None else None
    if stored is not None:
        show_page_result(stored.result, stored_page_image(str(store.path), stored.id), key=f"batch_{stored.id}")


@st.fragment(run_every=1.0)
def _live_panel(store: Store, job_id: int) -> None:
    _job_panel(store, job_id)
    thread = job_threads().get(job_id)
    if thread is None or not thread.alive:
        st.rerun()  # finished: the whole page again, without the timer


def main() -> None:
    require_app_shell("pages/batch.py")
    st.title("Batch")
    try:
        store = get_store()
    except Exception as exc:
        st.error(f"The results store cannot be opened: {one_line(exc)}")
        return
    _new_job(store)
    jobs = store.jobs.recent()
    if not jobs:
        st.caption("Start a job to see its progress here. Jobs are kept: an interrupted one can be resumed.")
        return
    st.divider()
    by_id = {job.id: job for job in jobs}
    if st.session_state.get("batch_job") not in by_id:
        st.session_state["batch_job"] = jobs[0].id
    job_id = st.selectbox("Job", list(by_id), format_func=lambda i: _job_label(by_id[i]), key="batch_job")
    thread = job_threads().get(job_id)
    if thread is not None and thread.alive:
        _live_panel(store, job_id)
    else:
        _job_panel(store, job_id)


main()
