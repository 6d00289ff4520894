"""The HTTP API: in-process through TestClient, and `cli.py serve` as a real uvicorn on a free port."""
from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import tempfile
import time
import zipfile

import httpx2
import psutil
import pytest
from fastapi.testclient import TestClient

import cli
from tests.conftest import ROOT, free_port, png_bytes, render_text_page, stop_process
from utils.api.app import API_KEY_ENV, create_app
from utils.api.serve import api_key_for, is_loopback
from utils.config import cached_settings, with_backend
from utils.documents.export import PAGE_FIELDS
from utils.store import Store

SCAN_LINES = ["Invoice number 4521 dated 12 March 2024", "Total amount due: 1 250 roubles"]


@pytest.fixture(scope="module")
def scan_png() -> bytes:
    return png_bytes(render_text_page(SCAN_LINES))


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    store = Store(tmp_path_factory.mktemp("store") / "results.db")
    with TestClient(create_app(store=store)) as test_client:  # the lifespan makes the loader and closes it
        yield test_client


@pytest.fixture(autouse=True)
def own_store(tmp_path, monkeypatch):
    """Apps made without a store open the one OCR_STORE_DB names: never the project's own."""
    monkeypatch.setenv("OCR_STORE_DB", str(tmp_path / "results.db"))


def one_line_detail(response) -> str:
    detail = response.json()["detail"]
    assert isinstance(detail, str) and detail and "\n" not in detail and "Traceback" not in detail
    return detail


def test_health_and_docs(client):
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/health", "/v1/models", "/v1/ocr"} <= set(paths)


def test_models_lists_each_with_its_status(client):
    models = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
    assert set(models) == set(cached_settings().models)
    assert models["tesseract"]["available"] and models["tesseract"]["default"]
    assert models["tesseract"]["tasks"] == ["text", "layout"]
    assert sum(m["default"] for m in models.values()) == 1


def test_ocr_of_a_scan_returns_its_text(client, scan_png):
    response = client.post("/v1/ocr", files={"file": ("scan.png", scan_png, "image/png")},
                           data={"model": "tesseract"})
    assert response.status_code == 200, response.text
    body = response.json()
    (document,) = body["documents"]
    assert document["file"] == "scan.png" and document["error"] is None
    (page,) = document["pages"]
    assert tuple(page) == PAGE_FIELDS and page["page"] == 1 and page["model"] == "tesseract"
    assert "Invoice number 4521" in page["text"] and "Total amount due" in page["text"]
    assert body["recovery_events"] == []


def test_ocr_languages_chosen_for_the_document(client, scan_png, ru_en_png):
    english = client.post("/v1/ocr", files={"file": ("ru_en.png", ru_en_png, "image/png")},
                          data={"model": "tesseract", "languages": "eng"})
    assert english.status_code == 200, english.text
    assert not any("\u0400" <= ch <= "\u04ff" for ch in english.json()["documents"][0]["pages"][0]["text"])
    unknown = client.post("/v1/ocr", files={"file": ("scan.png", scan_png, "image/png")},
                          data={"model": "tesseract", "languages": "xyz"})
    assert unknown.status_code == 400 and unknown.json()["detail"].startswith(
        "languages: tesseract has no language data for xyz (installed: ")


def test_ocr_answers_what_cli_ocr_prints(client, scan_png, tmp_path, capsys):
    path = tmp_path / "scan.png"
    path.write_bytes(scan_png)
    assert cli.main(["ocr", str(path), "--model", "tesseract", "--task", "layout", "--format", "json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    answered = client.post("/v1/ocr", files={"file": ("scan.png", scan_png)},
                           data={"model": "tesseract", "task": "layout"}).json()
    assert set(answered) == set(printed)
    timing = {"seconds", "load_seconds"}
    for ours, theirs in zip(answered["documents"][0]["pages"], printed["documents"][0]["pages"]):
        assert {k: v for k, v in ours.items() if k not in timing} == \
            {k: v for k, v in theirs.items() if k not in timing}


def test_pages_are_chosen_like_the_cli(client):
    pdf = io.BytesIO()
    pages = [render_text_page([f"Page number {n}"], width=900) for n in (1, 2, 3)]
    pages[0].save(pdf, format="PDF", save_all=True, append_images=pages[1:], resolution=100)
    response = client.post("/v1/ocr", files={"file": ("three.pdf", pdf.getvalue())},
                           data={"model": "tesseract", "pages": "2-3"})
    assert response.status_code == 200, response.text
    found = response.json()["documents"][0]["pages"]
    assert [p["page"] for p in found] == [2, 3]
    assert "number 3" in found[1]["text"]
    response = client.post("/v1/ocr", files={"file": ("three.pdf", pdf.getvalue())}, data={"pages": "7-9"})
    assert response.status_code == 400
    assert "past the last page (3)" in one_line_detail(response)


@pytest.mark.parametrize("upload,form,status,expected", [
    (("empty.png", b""), {}, 400, "empty.png: the file is empty"),
    (("notes.txt", b"hello"), {}, 400, "'.txt' files are not supported"),
    (("scan.png", b"%PDF-1.4 not really"), {}, 400, "the name says PNG but the content is PDF"),
    (None, {}, 422, "file: Field required"),
    (("scan.png", "SCAN"), {"model": "nope"}, 400, "unknown model 'nope'; known: tesseract"),
    (("scan.png", "SCAN"), {"model": "tesseract", "task": "markdown"}, 400, "tesseract does not do 'markdown'"),
    (("scan.png", "SCAN"), {"pages": "two"}, 400, "'two' is not a page number"),
])
def test_bad_input_gets_4xx_and_one_line(client, scan_png, upload, form, status, expected):
    files = None
    if upload is not None:
        name, data = upload
        files = {"file": (name, scan_png if data == "SCAN" else data)}
    response = client.post("/v1/ocr", files=files, data=form)
    assert response.status_code == status
    assert expected in one_line_detail(response)


def test_uploads_over_the_limit_are_refused_before_they_are_read(scan_png):
    settings = cached_settings().model_copy(deep=True)
    settings.documents.max_file_mb = 0.001  # about 1 KB
    big = scan_png + bytes(200_000)  # past the limit and the room left for the form around it
    with TestClient(create_app(settings)) as small:
        within_the_form_room = small.post("/v1/ocr", files={"file": ("scan.png", scan_png)})
        assert within_the_form_room.status_code == 413
        assert "scan.png: the file is" in one_line_detail(within_the_form_room)
        declared = small.post("/v1/ocr", files={"file": ("scan.png", big)})
        assert declared.status_code == 413
        assert one_line_detail(declared) == "the upload is over the limit of 0.001 MB"

        form = (b'--B\r\nContent-Disposition: form-data; name="file"; filename="scan.png"\r\n'
                b"Content-Type: image/png\r\n\r\n" + big + b"\r\n--B--\r\n")

        def chunks():  # no Content-Length: counted as it streams in
            for start in range(0, len(form), 4096):
                yield form[start:start + 4096]

        streamed = small.post("/v1/ocr", content=chunks(), headers={"content-type": "multipart/form-data; boundary=B"})
        assert streamed.status_code == 413 and "over the limit" in one_line_detail(streamed)


def test_an_api_key_guards_the_v1_routes(scan_png):
    with TestClient(create_app(api_key="k3y")) as guarded:
        assert guarded.get("/health").status_code == 200
        refused = guarded.get("/v1/models")
        assert refused.status_code == 401 and API_KEY_ENV in one_line_detail(refused)
        assert guarded.get("/v1/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert guarded.post("/v1/ocr", files={"file": ("scan.png", scan_png)}).status_code == 401
        assert guarded.get("/v1/models", headers={"Authorization": "Bearer k3y"}).status_code == 200
        assert guarded.get("/v1/models", headers={"X-API-Key": "k3y"}).status_code == 200


def test_an_unexpected_failure_is_one_line_not_a_traceback(monkeypatch):
    app = create_app()
    with TestClient(app, raise_server_exceptions=False) as broken:
        from utils.engine.loader import Loader

        def explode(self):
            raise RuntimeError("catalog broke\n  File 'x.py', line 1")

        monkeypatch.setattr(Loader, "catalog", explode)
        response = broken.get("/v1/models")
        assert response.status_code == 500
        assert one_line_detail(response) == "internal error: catalog broke"


def test_serve_binds_the_loopback_unless_a_key_is_set(monkeypatch, capsys):
    assert all(is_loopback(h) for h in ("127.0.0.1", "::1", "localhost", "127.0.0.2"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "192.168.1.5", "example.com"))
    monkeypatch.delenv(API_KEY_ENV, raising=False)
    assert api_key_for("127.0.0.1") is None
    assert cli.main(["serve", "--host", "0.0.0.0"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("cli.py: error: refusing to listen on 0.0.0.0 without an API key") and "\n" not in error
    monkeypatch.setenv(API_KEY_ENV, "k3y")
    assert api_key_for("0.0.0.0") == "k3y" and api_key_for("127.0.0.1") == "k3y"


@contextlib.contextmanager
def served_api(env: dict[str, str]):
    port = free_port()
    env = {"OCR_STORE_DB": os.path.join(tempfile.mkdtemp(prefix="api_store_"), "results.db"), **env}
    process = subprocess.Popen([sys.executable, "cli.py", "serve", "--port", str(port)], cwd=ROOT,
                               env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if process.poll() is not None:
                pytest.fail(f"cli.py serve exited: {process.stderr.read().decode()[-2000:]}")
            try:
                if httpx2.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx2.TransportError:
                time.sleep(0.3)
        else:
            pytest.fail("cli.py serve did not answer /health within 60 s")
        yield url, process
    finally:
        stop_process(process, timeout=20)
        process.stderr.close()


def test_cli_serve_answers_over_http(scan_png):
    with served_api({API_KEY_ENV: "k3y"}) as (url, process):
        headers = {"Authorization": "Bearer k3y"}
        assert httpx2.get(f"{url}/docs", timeout=10).status_code == 200
        response = httpx2.post(f"{url}/v1/ocr", files={"file": ("scan.png", scan_png)}, data={"model": "tesseract"},
                               headers=headers, timeout=120)
        assert response.status_code == 200, response.text
        assert "Invoice number 4521" in response.json()["documents"][0]["pages"][0]["text"]
        empty = httpx2.post(f"{url}/v1/ocr", files={"file": ("empty.pdf", b"")}, headers=headers, timeout=30)
        assert empty.status_code == 400 and one_line_detail(empty) == "empty.pdf: the file is empty"
        children = psutil.Process(process.pid).children(recursive=True)
        assert children  # the inference worker
        process.terminate()
        process.wait(timeout=20)
        assert "Application shutdown complete" in process.stderr.read().decode()
        assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]


def wait_for_job(client, job_id: int, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] not in ("pending", "running") and not job["running_here"]:
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.2)


def test_a_batch_job_over_http(client, scan_png):
    other = png_bytes(render_text_page(["Second document, page one", "Receipt 77"]))
    bundle = io.BytesIO()
    with zipfile.ZipFile(bundle, "w") as archive:
        archive.writestr("inner/third.png", png_bytes(render_text_page(["Third document inside a zip"])))
        archive.writestr("notes.txt", "not a document")
    uploads = [("scan.png", scan_png), ("second.png", other), ("bundle.zip", bundle.getvalue())]
    started = client.post("/v1/jobs", data={"model": "tesseract"}, files=[("files", u) for u in uploads])
    assert started.status_code == 202, started.text
    job = started.json()
    assert job["total"] == 3 and job["notes"] == ["bundle.zip: notes.txt: skipped (not an image or PDF)"]
    assert [d["name"] for d in job["documents"]] == ["scan.png", "second.png", "bundle/inner/third.png"]
    job = wait_for_job(client, job["id"])
    assert (job["status"], job["done"], job["errors"], job["pending"]) == ("done", 3, 0, 0)
    results = client.get(f"/v1/jobs/{job['id']}/results").json()
    texts = {d["file"]: d["pages"][0]["text"] for d in results["documents"]}
    assert "Invoice number 4521" in texts["scan.png"] and "Third document" in texts["bundle/inner/third.png"]
    assert tuple(results["documents"][0]["pages"][0]) == PAGE_FIELDS
    archive = client.get(f"/v1/jobs/{job['id']}/zip?formats=txt")
    assert archive.status_code == 200 and archive.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(archive.content)) as files:
        assert "summary.csv" in files.namelist() and "scan/scan_p1_tesseract.txt" in files.namelist()


@pytest.mark.parametrize("form,files,status,expected", [
    ({"model": "nope"}, [("files", ("a.png", "SCAN"))], 400, "unknown model 'nope'"),
    ({"model": "tesseract", "task": "markdown"}, [("files", ("a.png", "SCAN"))], 400, "does not do 'markdown'"),
    ({"model": "tesseract"}, [("files", ("empty.png", b""))], 400, "empty.png: the file is empty"),
    ({"model": "tesseract"}, [], 422, "files: Field required"),
])
def test_a_bad_job_request_gets_4xx_and_one_line(client, scan_png, form, files, status, expected):
    files = [(field, (name, scan_png if data == "SCAN" else data)) for field, (name, data) in files]
    response = client.post("/v1/jobs", data=form, files=files or None)
    assert response.status_code == status and expected in one_line_detail(response)


def test_unknown_jobs_and_formats_are_one_line(client):
    assert client.get("/v1/jobs/999").status_code == 404
    assert one_line_detail(client.get("/v1/jobs/999/results")) == "no job 999"
    assert client.post("/v1/jobs/999/resume").status_code == 404


def test_a_job_cut_short_by_a_shutdown_is_resumed(openai_double, tmp_path):
    """Stopping the API leaves a job's unfinished pages pending; another start resumes it, and every
    page ends with one result."""
    openai_double.models = ["Qwen/Qwen2-VL-2B-Instruct"]
    openai_double.delay_s = 0.4
    settings = with_backend(cached_settings(), "qwen_vl_2b", "openai", openai_double.url, concurrency=1)
    pages = [render_text_page([f"Page {n}"]) for n in range(6)]
    tiff = io.BytesIO()
    pages[0].save(tiff, format="TIFF", save_all=True, append_images=pages[1:])
    store = Store(tmp_path / "results.db")
    with TestClient(create_app(settings, store=store)) as first:
        job_id = first.post("/v1/jobs", data={"model": "qwen_vl_2b"},
                            files=[("files", ("six.tiff", tiff.getvalue()))]).json()["id"]
        deadline = time.monotonic() + 30
        while first.get(f"/v1/jobs/{job_id}").json()["done"] < 1:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    stopped = store.jobs.counts(job_id)
    assert store.jobs.get(job_id).status == "cancelled" and 0 < stopped.done < 6
    with TestClient(create_app(settings, store=store)) as second:
        assert second.post(f"/v1/jobs/{job_id}/resume").status_code == 202
        job = wait_for_job(second, job_id)
        results = second.get(f"/v1/jobs/{job_id}/results").json()["documents"][0]["pages"]
    assert (job["status"], job["done"]) == ("done", 6)
    assert [p["page"] for p in results] == [1, 2, 3, 4, 5, 6]
    assert store.count() == 6  # none stored twice


def test_extract_returns_the_fields_of_an_invoice(client):
    import random

    from benchmarks.invoices import make_invoice

    image, truth = make_invoice(random.Random(2), language="en", layout="lines", degrade=False)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    answer = client.post("/v1/extract", data={"template": "invoice", "model": "tesseract"},
                         files={"file": ("invoice.png", buffer.getvalue(), "image/png")})
    assert answer.status_code == 200, answer.text
    fields = answer.json()["fields"]
    assert (fields["number"], fields["date"], fields["total"]) == (truth.number, truth.date, truth.total)


@pytest.mark.parametrize("form,expected", [
    ({"template": "bill", "model": "tesseract"}, "template: unknown template 'bill'"),
    ({"template": "../../etc/passwd", "model": "tesseract"}, "template: give a template name"),
    ({"template": "invoice", "model": "ghost"}, "unknown model 'ghost'"),
])
def test_extract_bad_input_is_4xx_and_one_line(client, scan_png, form, expected):
    answer = client.post("/v1/extract", data=form, files={"file": ("scan.png", scan_png, "image/png")})
    assert answer.status_code == 400 and expected in one_line_detail(answer)
