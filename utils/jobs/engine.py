"""The batch job engine: many documents, one or several models, one task; resumable, on every core.

A job is rows in the store (utils/store/jobs.py). `prepare` reads the inputs once (content hash, page
count, page selection); `create_job` writes the job; `run_job` runs its pending pages through
`run_pages`, the one page runner, and writes each page's result and its "done" mark in one
transaction. Whatever kills the process, running the job again continues with the pages still
pending: none is redone, none is stored twice.

Classic engines run on N worker processes at once (one Loader, hence one guarded worker, per thread
here; default N = the cores this process may use). A model with weights (a VLM) runs on one worker:
on a GPU one model instance is all the memory holds. A model on a server (`backend: openai`) gets
as many threads as its `server.concurrency`, sharing one loader.
"""
from __future__ import annotations

import hashlib
import json
import os
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from models.contract import ResultKey, RunOptions
from models.registry import ModelSpec
from utils.config import Settings
from utils.documents.reader import Document, DocumentError, open_document, parse_page_selection
from utils.engine.loader import Loader
from utils.engine.pool import ModelUnavailable
from utils.engine.runner import run_pages
from utils.jobs.inputs import InputError, Source
from utils.messages import one_line
from utils.store import Job, JobDocument, Store
from utils.store.jobs import HEARTBEAT_S


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def runs_in_parallel(spec: ModelSpec) -> bool:
    """Classic engines (no downloaded weights) are cheap to run several times side by side; models with
    weights are not."""
    return spec.hub_id is None


def worker_count(spec: ModelSpec, requested: int | None) -> int:
    if spec.backend == "openai" and spec.server is not None:
        return spec.server.concurrency  # pages in flight to the server, all through one loader
    if not runs_in_parallel(spec):
        return 1
    return max(1, requested if requested is not None else available_cores())


def prepare(sources: Sequence[Source], settings: Settings, pages: str | None = None,
            keep: Callable[[Document, str], object] | None = None) -> list[JobDocument]:
    """Read each input once: its hash, page count and the pages to run, or the one line saying why not.
    `keep(document, name)` is called for each readable one (uploads are kept in the store)."""
    prepared = []
    for position, source in enumerate(sources):
        try:
            document = open_document(source.name, source.read(), settings.documents)
            chosen = tuple(parse_page_selection(pages, document.page_count))
        except (DocumentError, InputError) as exc:
            prepared.append(JobDocument(position=position, name=source.name, digest=None, path=source.path,
                                        member=source.member, error=one_line(exc)))
            continue
        except ValueError as exc:  # the page selection
            prepared.append(JobDocument(position=position, name=source.name, digest=None, path=source.path,
                                        member=source.member, error=f"{source.name}: {one_line(exc)}"))
            continue
        if keep is not None:
            keep(document, source.name)
        prepared.append(JobDocument(position=position, name=source.name, digest=document.digest, path=source.path,
                                    member=source.member, page_count=document.page_count, pages=chosen))
    return prepared


def fingerprint(documents: Sequence[JobDocument], models: Sequence[str], task: str, options: RunOptions,
                pages: str | None) -> str:
    """Same inputs (by content), models, task, output-changing options and pages: the same job."""
    payload = {"models": list(models), "task": task, "variant": options.output_key(task), "pages": pages,
               "documents": [[d.name, d.digest, d.error] for d in documents]}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def create_job(store: Store, documents: Sequence[JobDocument], models: Sequence[str], task: str,
               options: RunOptions | None = None, pages: str | None = None, name: str | None = None) -> int:
    options = options or RunOptions()
    if not name:
        first = documents[0].name if documents else "empty"
        name = first if len(documents) == 1 else f"{first} and {len(documents) - 1} more"
    return store.jobs.create(fingerprint(documents, models, task, options, pages), name, task, models, options, pages,
                             documents)


@dataclass(frozen=True)
class FinishedPage:
    name: str
    page: int  # 0-based
    model: str
    result_id: int | None
    error: str | None
    chars: int
    seconds: float


@dataclass
class Progress:
    """Where a job stands, for a progress bar: the whole job's counts and this run's speed."""

    job_id: int
    total: int
    finished: int
    errors: int
    run_finished: int = 0
    started: float = field(default_factory=time.monotonic)
    last: FinishedPage | None = None

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    @property
    def pages_per_second(self) -> float | None:
        elapsed = self.elapsed
        return self.run_finished / elapsed if self.run_finished and elapsed > 0 else None

    @property
    def eta_seconds(self) -> float | None:
        rate = self.pages_per_second
        return (self.total - self.finished) / rate if rate else None


def job_document(store: Store, settings: Settings, entry: JobDocument) -> Document:
    """A job's document: the store's kept copy, else its source file (which must not have changed).
    Raises DocumentError / InputError with one line when neither is there."""
    document = store.open_document(entry.digest or "", entry.name, settings.documents.pdf_dpi)
    if document is None:
        if entry.path is None:
            raise InputError(f"{entry.name}: the uploaded copy is no longer in the store")
        source = Source(name=entry.name, path=entry.path, member=entry.member)
        document = open_document(entry.name, source.read(), settings.documents)
        if document.digest != entry.digest:
            raise InputError(f"{entry.name}: the file changed since the job started; start a new job")
    return document


class _Documents:
    """Documents opened on demand and shared by the worker threads; a few stay open (LRU)."""

    def __init__(self, store: Store, settings: Settings, documents: Sequence[JobDocument], size: int = 4):
        self._store, self._settings = store, settings
        self._by_position = {d.position: d for d in documents}
        self._open: OrderedDict[int, Document] = OrderedDict()
        self._lock = threading.Lock()
        self._size = size

    def name(self, position: int) -> str:
        return self._by_position[position].name

    def get(self, position: int) -> Document:
        """Raises DocumentError / InputError with one line when the source is gone or changed."""
        with self._lock:
            if position in self._open:
                self._open.move_to_end(position)
                return self._open[position]
            document = job_document(self._store, self._settings, self._by_position[position])
            self._open[position] = document
            while len(self._open) > self._size:
                self._open.popitem(last=False)
            return document


def _cpu_settings(settings: Settings) -> Settings:
    """Classic engines never touch the GPU: their workers skip the CUDA probe."""
    settings = settings.model_copy(deep=True)
    settings.profile.device = "cpu"
    return settings


def run_job(store: Store, job_id: int, settings: Settings, *, workers: int | None = None,
            shared_loader: Loader | None = None, on_progress: Callable[[Progress], None] | None = None,
            stop: threading.Event | None = None) -> Job:
    """Run the job's pending pages; returns the job as it ends (done, cancelled when `stop` was set, or
    failed with a one-line error). `shared_loader` runs models that take one worker (the app's own
    loader, so a GPU model is not loaded twice); other loaders are made here and closed at the end."""
    job = store.jobs.get(job_id)
    if job is None:
        raise KeyError(f"no job {job_id} in {store.path}")
    stop = stop or threading.Event()
    documents = _Documents(store, settings, store.jobs.documents(job_id))
    counts = store.jobs.counts(job_id)
    progress = Progress(job_id, counts.total, counts.finished, counts.errors)
    lock = threading.Lock()
    failure: list[str] = []
    store.jobs.start(job_id)

    ticking = threading.Event()

    def tick() -> None:
        while not ticking.wait(HEARTBEAT_S):
            store.jobs.beat(job_id)

    heartbeat = threading.Thread(target=tick, name=f"job-{job_id}-heartbeat", daemon=True)
    heartbeat.start()

    def finished(model: str, position: int, page: int, result_id: int | None, error: str | None, chars: int,
                 seconds: float) -> None:
        with lock:
            progress.run_finished += 1
            progress.finished += 1
            progress.errors += error is not None
            progress.last = FinishedPage(documents.name(position), page, model, result_id, error, chars, seconds)
            if on_progress is not None:
                on_progress(progress)

    def work(model: str, loader: Loader, todo: queue.SimpleQueue) -> None:
        while not stop.is_set() and not failure:
            try:
                position, page = todo.get_nowait()
            except queue.Empty:
                return
            name = documents.name(position)
            try:
                document = documents.get(position)
            except (DocumentError, InputError) as exc:
                error = one_line(exc)
                key = ResultKey(digest="", page=page, model=model, task=job.task)
                store.jobs.finish_page(job_id, model, position, page, None, name, key=key, result=None, error=error,
                                       options=job.options)
                finished(model, position, page, None, error, 0, 0.0)
                continue
            seen = len(loader.recovery_events())
            try:
                outcome = next(iter(run_pages(loader, document, [page], model, job.task, job.options, stop=stop)), None)
            except ModelUnavailable as exc:
                failure.append(one_line(exc))
                return
            if outcome is None:  # stopped before the page started
                return
            events = loader.recovery_events()[seen:]
            result_id = store.jobs.finish_page(job_id, model, position, page, document, name, key=outcome.key,
                                               result=outcome.result, error=outcome.error, options=job.options,
                                               events=events)
            result = outcome.result
            finished(model, position, page, result_id, outcome.error, len(result.text) if result else 0,
                     result.seconds if result else 0.0)

    own_loaders: list[Loader] = []
    try:
        for model in job.models:
            if stop.is_set() or failure:
                break
            pending = store.jobs.pages(job_id, status="pending", model=model)
            if not pending:
                continue
            spec = settings.model(model)
            count = min(worker_count(spec, workers), len(pending))
            if spec.backend == "openai":
                # One loader takes pages from every thread at once; its client holds the server's limit.
                served = shared_loader or Loader(settings)
                if shared_loader is None:
                    own_loaders.append(served)
                loaders = [served] * count
            elif shared_loader is not None and not runs_in_parallel(spec):
                loaders = [shared_loader]
            else:
                worker_settings = _cpu_settings(settings) if runs_in_parallel(spec) else settings
                loaders = [Loader(worker_settings) for _ in range(count)]
                own_loaders += loaders
            todo: queue.SimpleQueue = queue.SimpleQueue()
            for item in pending:
                todo.put((item.position, item.page))
            threads = [threading.Thread(target=work, args=(model, loader, todo), name=f"job-{job_id}-{model}-{i}",
                                        daemon=True) for i, loader in enumerate(loaders)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            for loader in own_loaders:
                loader.close()
            own_loaders.clear()
    except BaseException as exc:
        stop.set()  # the workers finish the page in hand; what they finish is kept
        if not isinstance(exc, KeyboardInterrupt):
            failure.append(one_line(exc))
        raise
    finally:
        ticking.set()
        heartbeat.join()
        for loader in own_loaders:
            loader.close()
        left = store.jobs.counts(job_id).pending
        if failure:
            store.jobs.finish(job_id, "failed", failure[0])
        elif left:
            store.jobs.finish(job_id, "cancelled")
        else:
            store.jobs.finish(job_id, "done")
    return store.jobs.get(job_id) or job
