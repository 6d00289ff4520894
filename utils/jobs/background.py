"""A batch job run by a thread of a long-lived process (the app server, the HTTP API).

The job itself is rows in the store; the thread only holds what it knows beyond them (its stop
switch, its speed). A restart loses the threads, not the job: it can be resumed.
"""
from __future__ import annotations

import threading

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
        except Exception as exc:  # run_job has marked the job failed; whoever shows it says why
            self.error = one_line(exc)

    def _update(self, progress: Progress) -> None:
        self.progress = progress

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)


class JobThreads:
    """Every job thread one process started, by job id; a job runs on one thread at a time."""

    def __init__(self) -> None:
        self._threads: dict[int, JobThread] = {}
        self._lock = threading.Lock()

    def start(self, store: Store, job_id: int, loader: Loader, workers: int | None) -> JobThread:
        """Start (or resume) a job unless a thread of this process already runs it."""
        with self._lock:
            running = self._threads.get(job_id)
            if running is not None and running.alive:
                return running
            self._threads[job_id] = JobThread(store, job_id, loader, workers)
            return self._threads[job_id]

    def get(self, job_id: int) -> JobThread | None:
        return self._threads.get(job_id)

    def __getitem__(self, job_id: int) -> JobThread:
        return self._threads[job_id]

    def values(self) -> list[JobThread]:
        return list(self._threads.values())
