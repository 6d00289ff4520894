"""What app.py needs before and after a page, and nothing heavy: a page opened by its own URL goes
through app.py first, and a run a page started is followed (its progress redrawn) after the page and
the sidebar are drawn. Only Streamlit is imported here, so that app.py can draw a page before the
engine's modules are loaded."""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import streamlit as st

if TYPE_CHECKING:
    from pages.ui.run import Progress, RunJob

SHELL = "_app_shell"  # set by app.py on every run
KEPT = "_kept_widgets"  # widget key -> its last value, for the widgets the pages keep (pages/ui/workspace.py)
# What the uploaders accept: utils.documents.reader.ACCEPTED_SUFFIXES, written out here so that a page
# draws its uploader before the reader (and the engine) are imported; a test keeps the two the same.
UPLOAD_TYPES = ("bmp", "gif", "jpeg", "jpg", "pdf", "png", "tif", "tiff", "webp")
REDRAW_S = 0.1  # the panel redraws at most ten times a second...
TICK_S = 0.5  # ...and at least twice a second, so the elapsed time moves and a click is seen at once
_FOLLOW = "_run_follow"


def enter_shell() -> None:
    """app.py, first thing: this run goes through app.py; a follow left by an interrupted run is dropped
    (the page asks again if its run still goes on); the kept widgets' values are taken now, while they
    are still there: a value typed and left at once for another page arrives with the run that leaves,
    and Streamlit drops it at the end of that run."""
    st.session_state[SHELL] = True
    st.session_state.pop(_FOLLOW, None)
    kept = st.session_state.get(KEPT)
    if kept:
        for key in list(kept):
            if key in st.session_state:
                kept[key] = st.session_state[key]


def draw_uploader(key: str, label: str) -> tuple[list, bool]:
    """An uploader adding to the workspace: its files, and whether it was just drawn again after another
    page (empty then, though nothing was removed)."""
    fresh = key not in st.session_state
    files = st.file_uploader(label, type=list(UPLOAD_TYPES), accept_multiple_files=True, key=key,
                             help="PNG, JPEG, TIFF, WebP, BMP, GIF or PDF; every document stays in the workspace "
                                  "until you close it")
    return list(files or []), fresh


def require_app_shell(page_path: str) -> None:
    """Send a page opened by its own URL through app.py first.

    On a fresh server Streamlit runs a URL such as /system in its legacy pages/ mode, without
    app.py (no sidebar, no model choice); app.py then switches back to the page asked for.
    """
    if SHELL not in st.session_state:
        st.session_state["return_to"] = page_path
        st.switch_page("app.py")


def _seconds(value: float) -> str:
    return f"{value:.1f} s" if value < 60 else f"{int(value) // 60} min {int(value) % 60:02d} s"


def progress_line(progress: Progress, labels: dict[str, str]) -> str:
    """One line: the phase with its elapsed time, then the whole run's."""
    model = labels.get(progress.model or "", progress.model or "")
    if progress.phase == "starting":
        line = "Starting…"
    elif progress.phase == "waiting":
        ahead = f"{progress.ahead} request{'s' if progress.ahead != 1 else ''} ahead"
        line = f"Waiting for the worker: {ahead} (other users or tabs)… {_seconds(progress.phase_elapsed)}"
    elif progress.phase == "loading":
        line = f"Loading {model}… {_seconds(progress.phase_elapsed)}"
    else:
        page = f"page {progress.page + 1}" if progress.page is not None else "page"
        line = f"{model} · {page} ({progress.position} of {progress.total}) · {_seconds(progress.phase_elapsed)}"
        if progress.tokens:
            line += f" · {progress.tokens} tokens"
            rate = progress.tokens_per_second
            if rate is not None:
                line += f" · {rate:.1f} tokens/s"
    if progress.stopping:
        line = "Stopping after this page… " + line
    return f"{line} — {_seconds(progress.elapsed)} in all"


def draw_progress(placeholder, progress: Progress, labels: dict[str, str]) -> None:
    with placeholder.container():
        st.progress(progress.done / progress.total if progress.total else 0.0, text=progress_line(progress, labels))
        if progress.tail:
            st.code(progress.tail, language=None, wrap_lines=True, height=220)
        for note in progress.notes:
            st.warning(note)


_FOLLOW = "_run_follow"


def follow_later(job: RunJob, placeholder, labels: dict[str, str], finish: Callable[[], object] | None = None) -> None:
    """Ask app.py to follow `job` in `placeholder` once the page and the sidebar are drawn; when it ends,
    `finish` draws its results in place (without it, the whole app runs again to show them)."""
    st.session_state[_FOLLOW] = (job, placeholder, labels, finish)


def follow_pending() -> None:
    """Redraw the progress of the run a page asked to follow until it ends, then show its results.
    The script stays responsive: every redraw is a point where a click
    (Stop, another page) takes over, and the run itself goes on in its thread."""
    pending = st.session_state.pop(_FOLLOW, None)
    if pending is None:
        return
    job, placeholder, labels, finish = pending
    follow(job, lambda progress: draw_progress(placeholder, progress, labels))
    placeholder.empty()
    if finish is None:
        st.rerun()
    finish()


def follow(job: RunJob, draw: Callable[[Progress], None]) -> None:
    """Draw the job's progress on every change, at most every REDRAW_S and at least every TICK_S,
    until it has finished; the end is not held back by the REDRAW_S pause."""
    while not job.finished:
        draw(job.progress())
        drawn_at = time.monotonic()
        job.wait(TICK_S)
        pause = REDRAW_S - (time.monotonic() - drawn_at)
        if pause > 0:
            job.wait_finished(pause)
