"""The Batch page through AppTest: a zip with folders and a loose file, progress while it runs,
finished pages opened, cancel and resume, the results ZIP."""
from __future__ import annotations

import io
import time
import zipfile

import pytest

from pages.ui.jobs import job_threads
from tests.conftest import png_bytes, render_text_page
from utils.store import Store


def page_png(n: int) -> bytes:
    return png_bytes(render_text_page([f"Uploaded page {n}", f"Invoice {8000 + n}"], size=24, width=600))


def scans_zip(pages: int) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for n in range(pages):
            archive.writestr(f"box{n % 2}/scan{n:02d}.png", page_png(n))
    return buffer.getvalue()


@pytest.fixture
def store(tmp_path, monkeypatch) -> Store:
    path = tmp_path / "results.db"
    monkeypatch.setenv("OCR_STORE_DB", str(path))
    yield Store(path)
    for thread in job_threads().values():  # whatever a test started ends with it
        thread.stop.set()
        thread.join(60)


def open_batch(app_test):
    at = app_test()
    at.switch_page("pages/batch.py").run()
    assert not at.exception, at.exception
    return at


def wait_until_finished(at, job_id: int, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while job_threads()[job_id].alive:
        assert time.monotonic() < deadline, "the job did not finish"
        time.sleep(0.3)
    at.run()
    assert not at.exception, at.exception
    return at


def progress_text(at) -> str:
    return at.get("progress")[0].proto.text


def test_a_zip_and_a_file_run_as_one_job_with_progress_and_finished_pages(store, app_test):
    at = open_batch(app_test)
    uploader = at.file_uploader(key="batch_upload")
    uploader.upload("scans.zip", scans_zip(6), "application/zip")
    uploader.upload("loose.png", page_png(99), "image/png").run()
    assert at.multiselect(key="batch_models").value == ["tesseract"]
    at.button(key="batch_start").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    job_id = at.session_state["batch_job"]
    assert "/ 7 pages" in progress_text(at)
    wait_until_finished(at, job_id)
    assert progress_text(at).startswith("7 / 7 pages")
    assert store.jobs.get(job_id).status == "done"
    table = at.dataframe[0].value
    assert sorted(table["document"]) == sorted([f"scans/box{n % 2}/scan{n:02d}.png" for n in range(6)] + ["loose.png"])
    assert set(table["status"]) == {"done"}
    texts = [area.value for area in at.text_area]
    assert len(texts) == 1 and "Invoice 80" in texts[0]
    assert [b.label for b in at.get("download_button")] == ["⬇ ZIP of the results"]
    assert store.count(job_id=job_id) == 7


def test_cancel_then_resume(store, app_test):
    at = open_batch(app_test)
    at.file_uploader(key="batch_upload").upload("many.zip", scans_zip(30), "application/zip").run()
    at.button(key="batch_start").click().run()
    job_id = at.session_state["batch_job"]
    at.button(key=f"batch_cancel_{job_id}").click().run()
    wait_until_finished(at, job_id)
    job, counts = store.jobs.get(job_id), store.jobs.counts(job_id)
    assert job.status == "cancelled" and counts.done < 30
    resume = at.button(key=f"batch_resume_{job_id}")
    assert resume.label == f"Resume ({30 - counts.done} pages left)"
    resume.click().run()
    wait_until_finished(at, job_id)
    assert store.jobs.get(job_id).status == "done"
    assert store.count(job_id=job_id) == 30  # each page once
    assert progress_text(at).startswith("30 / 30 pages")


def test_nothing_readable_is_one_line_and_no_job(store, app_test):
    at = open_batch(app_test)
    at.file_uploader(key="batch_upload").upload("broken.png", page_png(1)[:300], "image/png").run()
    at.button(key="batch_start").click().run()
    assert not at.exception
    assert at.error[0].value.startswith("broken.png: the image data is damaged")
    assert store.jobs.recent() == []
