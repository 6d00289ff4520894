"""A run of pages in a background thread owned by the browser session, and its progress on the page.

A run in the script thread would die with the script: a click on Stop, on another page of the app or
on any widget reruns the script and abandons it halfway. Here the thread goes on whatever the script
does; the page only reads its progress. Each finished page is written to the results store by the
thread, before the page can show it, so nothing a run produced is lost with the tab.

Stop takes effect at the next page boundary (run_pages' stop event): the page being recognised is
finished and kept. Stopping inside a page would need the worker to abandon a generation, which the
engine does not offer.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from models.contract import PageResult, ResultKey, RunOptions
from utils.documents.reader import Document
from utils.engine.loader import Loader, ModelUnavailable
from utils.engine.runner import result_key, run_pages
from utils.messages import one_line
from utils.store import Store

TOKEN_TAIL = 2000  # characters of streamed text kept for the progress panel


class _Counter:
    def __init__(self) -> None:
        self._value = 0
        self._lock = threading.Lock()

    def __next__(self) -> int:
        with self._lock:
            self._value += 1
            return self._value


_uids = _Counter()


@dataclass
class Entry:
    """One page of the workspace: a result (kept in the store as `result_id`) or the reason it has none."""

    key: ResultKey
    document: str
    options: RunOptions
    result: PageResult | None = None
    error: str | None = None
    result_id: int | None = None
    correction: str | None = None
    wall_seconds: float | None = None
    uid: int = field(default_factory=lambda: next(_uids))

    @property
    def text(self) -> str:
        """The text as the user wants it: the correction if there is one."""
        if self.correction is not None:
            return self.correction
        return self.result.text if self.result is not None else ""


@dataclass(frozen=True)
class Progress:
    """What a run is doing, for the panel: a snapshot, safe to read while the thread goes on."""

    phase: str  # "starting", "waiting" (behind other requests for the worker), "loading", "running", "done"
    model: str | None
    page: int | None  # 0-based index of the page being recognised
    position: int  # 1-based rank of that page in the run
    total: int
    done: int
    failed: int
    elapsed: float
    phase_elapsed: float
    tokens: int
    tail: str
    stopping: bool
    notes: tuple[str, ...]
    ahead: int = 0  # requests ahead of this one for the worker, while waiting

    @property
    def tokens_per_second(self) -> float | None:
        if self.tokens < 2 or self.phase != "running" or self.phase_elapsed <= 0:
            return None
        return self.tokens / self.phase_elapsed


class RunJob:
    """Run `plan` ((model, page indices) in order) on one document with one task and options."""

    def __init__(self, loader: Loader, store: Store | None, document: Document,
                 plan: Sequence[tuple[str, Sequence[int]]], task: str, options: RunOptions,
                 warnings: Sequence[str] = (), kind: str = "ocr", labels: dict[str, str] | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.document = document
        self.plan = [(model, list(pages)) for model, pages in plan]
        self.task = task
        self.options = options
        self.kind = kind  # which page started it: each page follows its own runs
        self.labels = labels or {}
        self.stop = threading.Event()
        self.total = sum(len(pages) for _, pages in self.plan)
        self._loader = loader
        self._store = store
        self._warnings = tuple(warnings)
        self._clock = clock
        self._changed = threading.Condition()
        self._new: list[Entry] = []
        self._notes: list[str] = []
        self._phase = "starting"
        self._ahead = 0
        self._model: str | None = None
        self._page: int | None = None
        self._done = 0
        self._failed = 0
        self._tokens = 0
        self._tail = ""
        self._started = clock()
        self._phase_started = self._started
        self._finished = False
        self._thread = threading.Thread(target=self._run, name=f"{kind}-run", daemon=True)
        self._thread.start()

    # ---- the thread ---------------------------------------------------------------------------

    def _set(self, **changes) -> None:
        with self._changed:
            for name, value in changes.items():
                setattr(self, f"_{name}", value)
            self._changed.notify_all()

    def _working(self, model: str) -> str:
        # A model the worker does not hold yet is loaded first: that is what the user waits for.
        return "running" if model in self._loader.resident_models else "loading"

    def _page_started(self, model: str) -> Callable[[int, int, int], None]:
        def started(done: int, total: int, index: int) -> None:
            self._set(phase=self._working(model), model=model, page=index, tokens=0, tail="", ahead=0,
                      phase_started=self._clock())
        return started

    def _on_wait(self, ahead: int) -> None:
        """The worker serves others first: say how many are ahead; 0 when this request starts."""
        with self._changed:
            if ahead > 0:
                if self._phase != "waiting":
                    self._phase, self._phase_started = "waiting", self._clock()
                self._ahead = ahead
            elif self._phase == "waiting" and self._model is not None:
                self._phase, self._phase_started, self._ahead = self._working(self._model), self._clock(), 0
            self._changed.notify_all()

    def _on_token(self, piece: str) -> None:
        with self._changed:
            if self._phase == "loading":  # the first token: the model is loaded and generating
                self._phase, self._phase_started = "running", self._clock()
            self._tokens += 1
            self._tail = (self._tail + piece)[-TOKEN_TAIL:]
            self._changed.notify_all()

    def _note(self, note: str) -> None:
        with self._changed:
            if note not in self._notes:
                self._notes.append(note)
            self._changed.notify_all()

    def _deliver(self, entry: Entry) -> None:
        with self._changed:
            self._new.append(entry)
            self._done += 1
            self._failed += entry.result is None
            self._changed.notify_all()

    def _save(self, entry: Entry, events_before: int) -> None:
        """Into the store before anyone sees it; a store that fails costs a warning, never the result."""
        if self._store is None or entry.result is None:
            return
        try:
            events = self._loader.recovery_events()[events_before:]
            entry.result_id = self._store.save(entry.key, entry.result, self.document, options=self.options,
                                               events=events)
        except Exception as exc:  # disk full, database locked for too long, ...: the run goes on
            self._note(f"A result could not be saved in the results store ({one_line(exc)}); "
                       "it is shown here but will not be in History.")

    def _run(self) -> None:
        try:
            for model, pages in self.plan:
                if self.stop.is_set():
                    break
                finished: set[int] = set()
                try:
                    events_before = len(self._loader.recovery_events())
                    for outcome in run_pages(self._loader, self.document, pages, model, self.task, self.options,
                                             on_page=self._page_started(model), on_token=self._on_token,
                                             stop=self.stop, warnings=self._warnings, on_wait=self._on_wait):
                        entry = Entry(outcome.key, self.document.name, self.options, outcome.result, outcome.error,
                                      wall_seconds=outcome.wall_seconds)
                        self._save(entry, events_before)
                        events_before = len(self._loader.recovery_events())
                        finished.add(outcome.page)
                        self._deliver(entry)
                except ModelUnavailable as exc:  # no page of this model can run; the other models still do
                    for index in pages:
                        if index not in finished:
                            key = result_key(self.document, index, model, self.task, self.options)
                            self._deliver(Entry(key, self.document.name, self.options,
                                                error=f"{self.labels.get(model, model)}: {one_line(exc)}"))
        except Exception as exc:  # a bug must not leave the page waiting forever
            self._note(f"The run stopped: {one_line(exc)}")
        finally:
            self._set(finished=True, phase="done")

    # ---- the page's side ----------------------------------------------------------------------

    @property
    def finished(self) -> bool:
        return self._finished

    def take(self) -> list[Entry]:
        """The entries finished since the last call (each is handed out once)."""
        with self._changed:
            new, self._new = self._new, []
        return new

    def progress(self) -> Progress:
        now = self._clock()
        with self._changed:
            position = min(self._done + 1, self.total)
            return Progress(self._phase, self._model, self._page, position, self.total, self._done, self._failed,
                            now - self._started, now - self._phase_started, self._tokens, self._tail,
                            self.stop.is_set() and not self._finished, tuple(self._notes), self._ahead)

    def wait(self, timeout: float) -> None:
        """Return after the next change of progress, or after `timeout` seconds."""
        with self._changed:
            if not self._finished:
                self._changed.wait(timeout)

    def wait_finished(self, timeout: float) -> None:
        """Return once the run has finished, or after `timeout` seconds."""
        with self._changed:
            self._changed.wait_for(lambda: self._finished, timeout)

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)
