"""The session's background run (pages/ui/run.py): results stored before they are handed out, Stop at
the next page, phases with elapsed time, a store failure that costs a warning, not the run."""
from __future__ import annotations

import sqlite3
import threading
import time

import pytest
from PIL import Image

from models.contract import PageResult, RunOptions
from pages.ui.run import RunJob
from pages.ui.shell import follow, progress_line
from tests.test_documents import make_pdf
from utils.config import cached_settings
from utils.documents.reader import open_document
from utils.engine.loader import Loader
from utils.store import Store


class StreamingLoader:
    """Stands in for the worker where timing is the point: tokens at a set pace, a model that is
    'loaded' by its first page."""

    def __init__(self, tokens: int, pace: float, load_seconds: float = 0.0, queue: tuple[int, ...] = ()):
        self.tokens, self.pace, self.load_seconds, self.queue = tokens, pace, load_seconds, queue
        self.resident_models: list[str] = []

    def recovery_events(self) -> list:
        return []

    def run(self, model: str, image: Image.Image, task: str = "text", options: RunOptions | None = None,
            on_token=None, page: int | None = None, source: str | None = None, on_wait=None) -> PageResult:
        for ahead in self.queue:  # other requests served first
            if on_wait is not None:
                on_wait(ahead)
            time.sleep(0.3)
        if self.queue and on_wait is not None:
            on_wait(0)
        time.sleep(self.load_seconds)
        self.resident_models = [model]
        for _ in range(self.tokens):
            if on_token is not None:
                on_token("tok ")
            time.sleep(self.pace)
        return PageResult(text="tok " * self.tokens, model=model, task=task, tokens=self.tokens, seconds=1.0, page=page)


@pytest.fixture(scope="module")
def loader():
    loader = Loader(cached_settings())
    yield loader
    loader.close()


def test_streamed_tokens_redraw_the_panel_at_most_ten_times_a_second():
    document = open_document("page.pdf", make_pdf(1))
    job = RunJob(StreamingLoader(tokens=400, pace=0.005), None, document, [("vlm", [0])], "text", RunOptions())
    drawn = []
    started = time.monotonic()
    follow(job, drawn.append)
    seconds = time.monotonic() - started
    assert seconds >= 2.0  # 400 tokens at 5 ms
    assert len(drawn) <= seconds * 10 + 2
    assert len(drawn) >= seconds * 2  # and it moves: at least twice a second
    assert drawn[-1].tokens > 300 and drawn[-1].tail.endswith("tok ")


def test_the_end_of_a_run_is_drawn_at_once_not_after_the_redraw_pause():
    document = open_document("page.pdf", make_pdf(1))
    job = RunJob(StreamingLoader(tokens=1, pace=0.03), None, document, [("vlm", [0])], "text", RunOptions())
    started = time.monotonic()
    follow(job, lambda progress: None)
    assert job.finished
    assert time.monotonic() - started < 0.095  # the run takes 0.03 s; the old pause made it 0.1 s or more


def test_phases_say_loading_then_page_k_of_n_with_tokens_per_second():
    document = open_document("report.pdf", make_pdf(2))
    job = RunJob(StreamingLoader(tokens=30, pace=0.01, load_seconds=0.6), None, document, [("qwen", [0, 1])],
                 "text", RunOptions(), labels={"qwen": "Qwen3-VL 2B"})
    lines = []
    follow(job, lambda progress: lines.append(progress_line(progress, job.labels)))
    assert any(line.startswith("Loading Qwen3-VL 2B… ") for line in lines), lines
    running = [line for line in lines if line.startswith("Qwen3-VL 2B · page 2 (2 of 2)")]
    assert running and any("tokens/s" in line for line in running), lines
    assert all(line.endswith(" in all") for line in lines)
    entries = job.take()
    assert [e.key.page for e in entries] == [0, 1] and job.take() == []


def test_waiting_behind_other_requests_says_how_many_are_ahead():
    document = open_document("page.pdf", make_pdf(1))
    job = RunJob(StreamingLoader(tokens=10, pace=0.01, queue=(2, 1)), None, document, [("tesseract", [0])], "text",
                 RunOptions(), labels={"tesseract": "Tesseract"})
    lines = []
    follow(job, lambda progress: lines.append(progress_line(progress, job.labels)))
    waiting = [line for line in lines if line.startswith("Waiting for the worker")]
    assert any("2 requests ahead" in line for line in waiting) and any("1 request ahead" in line for line in waiting)
    assert lines[-1].startswith(("Tesseract · page 1", "Loading Tesseract")), lines


def test_a_second_run_hears_it_waits_behind_the_first_on_the_real_worker(loader):
    long = open_document("long.pdf", make_pdf(12))
    heard: list[int] = []

    class Listening(RunJob):
        def _on_wait(self, ahead: int) -> None:
            heard.append(ahead)
            super()._on_wait(ahead)

    first = RunJob(loader, None, long, [("tesseract", list(range(12)))], "text", RunOptions())
    while first.progress().done < 1:  # the worker is busy with the first run's pages
        time.sleep(0.01)
    second = Listening(loader, None, open_document("short.pdf", make_pdf(1)), [("tesseract", [0])], "text",
                       RunOptions())
    second.join(120)
    first.join(120)
    assert heard and heard[0] >= 1 and heard[-1] == 0  # one ahead (the first run's page), then its turn
    assert second.take()[0].result is not None


def test_results_are_stored_before_they_are_handed_out(loader, tmp_path):
    store = Store(tmp_path / "results.db")
    document = open_document("report.pdf", make_pdf(2))
    seen_in_store = []

    class Watching(RunJob):
        def _deliver(self, entry):
            seen_in_store.append(store.get(entry.result_id) is not None)
            super()._deliver(entry)

    job = Watching(loader, store, document, [("tesseract", [0, 1])], "text", RunOptions())
    job.join(120)
    entries = job.take()
    assert seen_in_store == [True, True]
    assert [store.get(e.result_id).result.text for e in entries] == [e.result.text for e in entries]
    assert "Quarterly report, page 2" in entries[1].result.text


def test_stop_ends_the_run_at_the_next_page_and_keeps_the_pages_done(loader, tmp_path):
    store = Store(tmp_path / "results.db")
    document = open_document("long.pdf", make_pdf(8))
    stopped = threading.Event()

    class StopAfterFirst(RunJob):
        def _deliver(self, entry):
            super()._deliver(entry)
            if not stopped.is_set():
                self.stop.set()
                stopped.set()

    job = StopAfterFirst(loader, store, document, [("tesseract", list(range(8)))], "text", RunOptions())
    job.join(120)
    entries = job.take()
    assert job.finished
    assert [e.key.page for e in entries] == [0]
    assert store.count() == 1 and "page 1" in entries[0].result.text


def test_a_store_that_fails_costs_a_warning_and_the_run_goes_on(loader, tmp_path):
    class BrokenStore(Store):
        def save(self, *args, **kwargs):
            raise sqlite3.OperationalError("disk I/O error")

    document = open_document("report.pdf", make_pdf(2))
    job = RunJob(loader, BrokenStore(tmp_path / "results.db"), document, [("tesseract", [0, 1])], "text",
                 RunOptions())
    job.join(120)
    entries = job.take()
    assert [e.result is not None for e in entries] == [True, True]
    assert all(e.result_id is None for e in entries)
    notes = job.progress().notes
    assert len(notes) == 1 and "could not be saved in the results store (disk I/O error)" in notes[0]


def test_a_model_that_cannot_run_fails_its_pages_and_the_next_model_still_runs(loader):
    document = open_document("report.pdf", make_pdf(1))
    job = RunJob(loader, None, document, [("qwen3_vl_2b", [0]), ("tesseract", [0])], "text", RunOptions())
    job.join(120)
    entries = job.take()
    assert [(e.key.model, e.result is not None) for e in entries] == [("qwen3_vl_2b", False), ("tesseract", True)]
    assert entries[0].error.startswith("qwen3_vl_2b: ")
