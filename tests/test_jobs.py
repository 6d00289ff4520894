"""The batch job engine in-process: inputs (folders, zips), cancel and resume, never a page twice,
several models, and the job's output files."""
from __future__ import annotations

import csv
import io
import threading
import zipfile

import pytest

from models.contract import PageResult, ResultKey, RunOptions
from tests.conftest import png_bytes, render_text_page
from tests.test_documents import make_pdf
from utils.config import cached_settings
from utils.documents.reader import open_document
from utils.jobs.engine import create_job, fingerprint, prepare, run_job, worker_count
from utils.jobs.inputs import InputError, expand_paths, expand_upload
from utils.jobs.outputs import job_files, job_zip, parse_formats
from utils.store import Store

MAX = 100 * 2**20


def page_png(n: int) -> bytes:
    return png_bytes(render_text_page([f"Engine page {n}", f"Invoice {7000 + n}"], size=26, width=700))


@pytest.fixture
def store(tmp_path) -> Store:
    return Store(tmp_path / "r.db")


def upload_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("2024/march/a.png", page_png(1))
        archive.writestr("2024/report.pdf", make_pdf(2))
        archive.writestr("2024/readme.txt", "not a document")
        archive.writestr("__MACOSX/2024/._a.png", b"junk")
        archive.writestr("2024/april/", b"")
    return buffer.getvalue()


def test_zip_uploads_keep_their_folders_and_skip_what_is_not_a_document():
    sources, notes = expand_upload("scans.zip", upload_zip(), MAX)
    assert [s.name for s in sources] == ["scans/2024/march/a.png", "scans/2024/report.pdf"]
    assert notes == ["scans.zip: 2024/readme.txt: skipped (not an image or PDF)"]
    assert sources[1].read()[:5] == b"%PDF-"
    single, _ = expand_upload("a.png", page_png(1), MAX)
    assert [s.name for s in single] == ["a.png"]
    with pytest.raises(InputError, match="not a readable zip"):
        expand_upload("bad.zip", b"PK\x03\x04garbage", MAX)


def test_paths_expand_folders_and_zips_in_name_order(tmp_path):
    (tmp_path / "in" / "sub").mkdir(parents=True)
    (tmp_path / "in" / "b.png").write_bytes(page_png(2))
    (tmp_path / "in" / "sub" / "a.png").write_bytes(page_png(1))
    (tmp_path / "in" / ".hidden.png").write_bytes(page_png(3))
    (tmp_path / "in" / "notes.txt").write_text("x")
    (tmp_path / "scans.zip").write_bytes(upload_zip())
    sources, notes = expand_paths([str(tmp_path / "in"), str(tmp_path / "scans.zip"), str(tmp_path / "x.png")], MAX)
    assert [s.name for s in sources] == ["in/b.png", "in/sub/a.png", "scans/2024/march/a.png",
                                         "scans/2024/report.pdf", "x.png"]
    assert sources[3].member == "2024/report.pdf" and sources[3].read()[:5] == b"%PDF-"
    assert notes == [f"{tmp_path / 'scans.zip'}: 2024/readme.txt: skipped (not an image or PDF)"]
    with pytest.raises(InputError, match="no such file"):
        sources[4].read()


def make_job(store: Store, tmp_path, pages: int = 6, models=("tesseract",), task: str = "text") -> int:
    folder = tmp_path / "docs"
    folder.mkdir(exist_ok=True)
    for n in range(pages):
        (folder / f"p{n:02d}.png").write_bytes(page_png(n))
    sources, _ = expand_paths([str(folder)], MAX)
    documents = prepare(sources, cached_settings())
    return create_job(store, documents, list(models), task)


def one_result_per_page(store: Store, job_id: int) -> dict[tuple[str, int], str]:
    pages = store.jobs.pages(job_id)
    assert all(p.status == "done" and p.result_id is not None for p in pages)
    results = store.results(job_id=job_id, limit=1000)
    assert len(results) == len(pages) == len({(r.key.digest, r.key.page, r.key.model) for r in results})
    return {(r.document_name, r.key.page): store.get(r.id).result.text for r in results}


def test_cancel_then_resume_finishes_every_page_once(store, tmp_path):
    job_id = make_job(store, tmp_path, pages=8)
    stop = threading.Event()
    seen = []

    def on_progress(progress) -> None:
        seen.append((progress.finished, progress.total))
        if progress.finished >= 3:
            stop.set()

    job = run_job(store, job_id, cached_settings(), workers=2, on_progress=on_progress, stop=stop)
    assert job.status == "cancelled"
    counts = store.jobs.counts(job_id)
    assert 3 <= counts.done < 8 and counts.errors == 0
    assert seen[0][1] == 8
    job = run_job(store, job_id, cached_settings(), workers=2)
    assert job.status == "done" and not job.active
    texts = one_result_per_page(store, job_id)
    assert len(texts) == 8 and "Invoice 7005" in texts[("docs/p05.png", 0)]


def test_a_page_finished_elsewhere_is_not_stored_twice(store, tmp_path):
    job_id = make_job(store, tmp_path, pages=1)
    document = open_document("p00.png", page_png(0))
    key = ResultKey(digest=document.digest, page=0, model="tesseract", task="text")
    result = PageResult(text="first", model="tesseract", task="text")
    args = (job_id, "tesseract", 0, 0, document, "docs/p00.png")
    first = store.jobs.finish_page(*args, key=key, result=result, error=None, options=RunOptions())
    second = store.jobs.finish_page(*args, key=key, result=result.model_copy(update={"text": "second"}), error=None,
                                    options=RunOptions())
    assert first is not None and second is None
    assert [r.preview for r in store.results(job_id=job_id)] == ["first"]


def test_several_models_documents_that_fail_and_the_output_files(store, tmp_path):
    sources, _ = expand_upload("set.zip", upload_zip(), MAX)
    sources.append(expand_upload("broken.png", page_png(9)[:300], MAX)[0][0])
    documents = prepare(sources, cached_settings(), keep=lambda d, n: store.keep(d, n, pin=True))
    assert [d.error is None for d in documents] == [True, True, False]
    job_id = create_job(store, documents, ["tesseract", "rapidocr"], "text")
    assert store.jobs.counts(job_id).total == 6  # (1 + 2 pages) x 2 models
    job = run_job(store, job_id, cached_settings(), workers=2)
    assert job.status == "done", job.error
    files = dict(job_files(store, job_id, parse_formats("txt,md,pdf")))
    folder = "set/2024/march/a"
    assert "Invoice 7001" in files[f"{folder}/a_p1_tesseract.txt"].decode()
    assert f"{folder}/a_p1_rapidocr.txt" in files and f"{folder}/a_tesseract.md" in files
    assert files[f"{folder}/a_tesseract.pdf"][:5] == b"%PDF-"
    assert "Quarterly report, page 2" in files["set/2024/report/report_tesseract.md"].decode()
    summary = list(csv.DictReader(io.StringIO(files["summary.csv"].decode())))
    assert [(r["file"], r["page"], r["model"], r["status"]) for r in summary] == [
        ("set/2024/march/a.png", "1", "tesseract", "done"), ("set/2024/march/a.png", "1", "rapidocr", "done"),
        ("set/2024/report.pdf", "1", "tesseract", "done"), ("set/2024/report.pdf", "2", "tesseract", "done"),
        ("set/2024/report.pdf", "1", "rapidocr", "done"), ("set/2024/report.pdf", "2", "rapidocr", "done"),
        ("broken.png", "", "", "error")]
    assert summary[-1]["error"].startswith("broken.png: the image data is damaged")
    with zipfile.ZipFile(io.BytesIO(job_zip(store, job_id))) as archive:
        assert f"{folder}/a_p1_tesseract.json" in archive.namelist()


def test_the_same_inputs_models_and_task_are_the_same_job(store, tmp_path):
    settings = cached_settings()
    sources, _ = expand_upload("a.png", page_png(1), MAX)
    documents = prepare(sources, settings)
    same = fingerprint(documents, ["tesseract"], "text", RunOptions(), None)
    assert same == fingerprint(prepare(sources, settings), ["tesseract"], "text", RunOptions(), None)
    assert same != fingerprint(documents, ["rapidocr"], "text", RunOptions(), None)
    assert same != fingerprint(documents, ["tesseract"], "layout", RunOptions(), None)
    assert same != fingerprint(documents, ["tesseract"], "text", RunOptions(), "1")
    job_id = create_job(store, documents, ["tesseract"], "text")
    assert store.jobs.find(same).id == job_id


def test_workers_default_to_the_cores_for_classic_engines_and_one_for_models_with_weights():
    settings = cached_settings()
    assert worker_count(settings.model("tesseract"), 3) == 3
    assert worker_count(settings.model("tesseract"), None) >= 1
    assert worker_count(settings.model("qwen_vl_2b"), 4) == 1


def test_pinned_uploads_are_released_when_the_job_is_done(tmp_path):
    store = Store(tmp_path / "r.db", max_files_mb=0)
    sources, _ = expand_upload("a.png", page_png(1), MAX)
    documents = prepare(sources, cached_settings(), keep=lambda d, n: store.keep(d, n, pin=True))
    job_id = create_job(store, documents, ["tesseract"], "text")
    store.collect_files()
    assert store.kept_document(documents[0].digest).kept  # the job still needs it
    assert run_job(store, job_id, cached_settings(), workers=1).status == "done"
    assert not store.kept_document(documents[0].digest).kept  # over the limit of 0 MB once done
