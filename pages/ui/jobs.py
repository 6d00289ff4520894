"""Batch jobs running inside the server: one thread per job, outliving the page run that started it.

The job itself is rows in the store; this registry only holds what a running thread knows beyond
them (its stop switch, its speed). A server restart loses the threads, not the job: the Batch page
offers to resume it.
"""
from __future__ import annotations

import threading

import streamlit as st

from utils.engine.loader import Loader
from utils.jobs.engine import Progress, run_job
from utils.messages import one_line
from utils.store import Store


class JobThread:
    def __init__(self, store: Store, job_id: int, loader: Loader, workers: int | None):
        self.job_id = job_id
        self.stop = threading.Event()
        self.progress: Progress | None = None
        self.error: str | None = None
        self._thread = threading.Thread(target=self._run, args=(store, loader, workers), name=f"batch-job-{job_id}",
                                        daemon=True)
        self._thread.start()

    def _run(self, store: Store, loader: Loader, workers: int | None) -> None:
        try:
            run_job(store, self.job_id, loader.settings, workers=workers, shared_loader=loader,
                    on_progress=self._update, stop=self.stop)
        except Exception as exc:  # run_job has marked the job failed; the page shows why
            self.error = one_line(exc)

    def _update(self, progress: Progress) -> None:
        self.progress = progress

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)


@st.cache_resource(show_spinner=False)
def job_threads() -> dict[int, JobThread]:
    """Every job thread this server started, by job id (one server process, many sessions)."""
    return {}


_start_lock = threading.Lock()


def start_job(store: Store, job_id: int, loader: Loader, workers: int | None) -> JobThread:
    """Start (or resume) a job unless a thread of this server already runs it."""
    threads = job_threads()
    with _start_lock:
        running = threads.get(job_id)
        if running is not None and running.alive:
            return running
        threads[job_id] = JobThread(store, job_id, loader, workers)
        return threads[job_id]
