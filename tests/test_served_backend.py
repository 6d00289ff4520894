"""`backend: openai`: registry entries run on an OpenAI-compatible server (the protocol's test double)
with the same prompts, pixel budgets, parsing and page results as in-process."""
from __future__ import annotations

import base64
import io
import json
import sqlite3
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi.testclient import TestClient
from PIL import Image

import cli
from models.contract import RunOptions
from models.qwen_vl import QwenVLAdapter
from models.registry import adapter_class
from models.vlm.served import ServedVLM
from tests.conftest import ROOT, png_bytes, render_text_page
from tests.openai_double import OpenAIDouble
from tests.test_batch_cli import finished_pages, wait_for_pages
from utils.api.app import create_app
from utils.config import ConfigError, cached_settings, with_backend
from utils.documents.reader import open_document
from utils.engine.loader import Loader, ModelUnavailable
from utils.engine.runner import run_pages
from utils.store import Store

LINES = ["Invoice number 4521 dated 12 March 2024", "Total amount due: 1 250 roubles"]


@pytest.fixture(scope="module")
def page() -> Image.Image:
    return render_text_page(LINES)


def served(double: OpenAIDouble, model: str, **server) -> Loader:
    double.models = [cached_settings().model(model).hub_id]
    settings = with_backend(cached_settings(), model, "openai", double.url, server.pop("concurrency", None))
    for key, value in server.items():
        setattr(settings.models[model].server, key, value)
    return Loader(settings)


def sent_image(request) -> Image.Image:
    (url,) = request.image_urls
    assert url.startswith("data:image/png;base64,")
    return Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))


def test_an_entry_switches_to_the_server_variant_of_its_adapter(openai_double):
    settings = with_backend(cached_settings(), "qwen_vl_2b", "openai", openai_double.url)
    cls = adapter_class(settings.models["qwen_vl_2b"])
    assert issubclass(cls, ServedVLM) and issubclass(cls, QwenVLAdapter)
    assert settings.models["qwen_vl_2b"].server.base_url == [openai_double.url]
    with pytest.raises(ConfigError, match="models.tesseract.backend: adapter tesseract_ocr runs in-process only"):
        with_backend(cached_settings(), "tesseract", "openai", openai_double.url)
    with pytest.raises(ConfigError, match="models.dots_ocr.server: backend openai needs a server block"):
        with_backend(cached_settings(), "dots_ocr", "openai")


def test_a_page_goes_with_the_models_prompt_budget_and_settings(openai_double, page):
    openai_double.answer = "Invoice number 4521\nTotal amount due"
    loader = served(openai_double, "qwen_vl_2b")
    try:
        result = loader.run("qwen_vl_2b", page, "text", page=0, source="scan.png")
        assert loader.resident_models == []  # no worker process was needed
    finally:
        loader.close()
    assert (result.text, result.raw, result.device, result.page) == (openai_double.answer, openai_double.answer,
                                                                        "server", 0)
    assert result.tokens == 6 and not result.truncated
    (request,) = openai_double.requests
    body = request.body
    spec = cached_settings().model("qwen_vl_2b")
    local = QwenVLAdapter("qwen_vl_2b", spec, cached_settings().profile)
    assert body["model"] == "Qwen/Qwen2-VL-2B-Instruct"
    assert (body["max_completion_tokens"], body["temperature"], body["skip_special_tokens"]) == (2048, 0.0, False)
    assert "repetition_penalty" not in body  # null in config: the checkpoint's own applies, as in-process
    assert request.prompt_text == local.task_prompt("text")
    assert sent_image(request).size == local.input_size(page.size, RunOptions())
    assert body["messages"][0]["content"][0]["type"] == "image_url"  # the image before the text, as in-process


def test_the_guards_smaller_budgets_reach_the_request(openai_double, page):
    loader = served(openai_double, "qwen_vl_2b")
    try:
        loader.run("qwen_vl_2b", page, "markdown", RunOptions(max_pixels=250_880, max_new_tokens=512))
    finally:
        loader.close()
    request = openai_double.requests[0]
    width, height = sent_image(request).size
    assert width * height <= 250_880 and width % 28 == 0 and height % 28 == 0
    assert request.body["max_completion_tokens"] == 512


def test_dots_ocr_layout_is_framed_and_parsed_as_in_process(openai_double, page):
    raw = json.dumps([{"bbox": [84, 56, 1316, 112], "category": "Title", "text": "Invoice number 4521"},
                      {"bbox": [84, 140, 900, 196], "category": "Text", "text": "Total amount due: 1 250 roubles"}])
    openai_double.answer = raw
    loader = served(openai_double, "dots_ocr")
    try:
        result = loader.run("dots_ocr", page, "layout")
    finally:
        loader.close()
    request = openai_double.requests[0]
    assert request.prompt_text.startswith("<|img|><|imgpad|><|endofimg|>")  # dots.ocr's own vLLM framing
    spec = cached_settings().model("dots_ocr")
    local = adapter_class(spec)("dots_ocr", spec, cached_settings().profile)
    assert request.prompt_text.endswith(local.task_prompt("layout"))
    expected, size = local.reparse(raw, "layout", page.size)
    assert sent_image(request).size == size
    assert [b.text for b in result.blocks] == ["Invoice number 4521", "Total amount due: 1 250 roubles"]
    assert result.blocks == expected.blocks and result.markdown == expected.markdown and result.raw == raw


def test_qwen2_grounding_tokens_survive_the_server(openai_double, page):
    raw = ("<|object_ref_start|>Invoice number 4521<|object_ref_end|><|box_start|>(57,100),(940,330)<|box_end|>"
           "<|object_ref_start|>Total amount due<|object_ref_end|><|box_start|>(57,500),(700,700)<|box_end|>")
    openai_double.answer = raw
    loader = served(openai_double, "qwen_vl_2b")
    shown: list[str] = []
    try:
        result = loader.run("qwen_vl_2b", page, "layout", on_token=shown.append)
    finally:
        loader.close()
    assert [b.text for b in result.blocks] == ["Invoice number 4521", "Total amount due"]
    assert result.blocks[0].bbox[0] == pytest.approx(57 / 1000 * page.width, abs=2)
    assert "<|box_start|>" not in "".join(shown)  # streamed for reading, as in-process: markup left out


def test_a_loop_is_stopped_on_the_stream(openai_double, page):
    openai_double.answer = "Invoice number 4521\n" + "la " * 3000
    loader = served(openai_double, "qwen_vl_2b")
    try:
        result = loader.run("qwen_vl_2b", page, "text", RunOptions(max_new_tokens=4096))
    finally:
        loader.close()
    assert result.truncated and any("loop" in w for w in result.warnings)
    assert result.tokens < 1200  # stopped after about min_span pieces, not at the end of the 3000
    assert result.text.startswith("Invoice number 4521") and len(result.text) < 3400


def test_a_token_cap_reached_marks_the_page_truncated(openai_double, page):
    openai_double.answer = " ".join(f"word{i}" for i in range(100))
    loader = served(openai_double, "qwen_vl_2b")
    try:
        result = loader.run("qwen_vl_2b", page, "text", RunOptions(max_new_tokens=10))
    finally:
        loader.close()
    assert result.truncated and any("token cap (10" in w for w in result.warnings)
    assert result.text.split() == [f"word{i}" for i in range(10)]


def test_pages_run_concurrently_up_to_the_limit_and_come_back_in_order(openai_double):
    openai_double.delay_s = 0.4
    openai_double.answer = lambda body: f"page of {sent_size(body)}"
    pages = [render_text_page([f"Page {n}"], width=600 + 28 * n) for n in range(8)]
    buffer = io.BytesIO()
    pages[0].save(buffer, format="TIFF", save_all=True, append_images=pages[1:])
    document = open_document("eight.tiff", buffer.getvalue())
    loader = served(openai_double, "qwen_vl_2b", concurrency=3)
    try:
        with ThreadPoolExecutor(max_workers=6) as pool:
            outcomes = list(pool.map(lambda i: next(run_pages(loader, document, [i], "qwen_vl_2b", "text")),
                                     range(8)))
    finally:
        loader.close()
    assert openai_double.max_in_flight == 3  # six threads asked, the server's limit held
    assert [o.page for o in outcomes] == list(range(8)) and not any(o.error for o in outcomes)
    widths = [int(o.result.text.split()[-1].split("x")[0]) for o in outcomes]
    assert widths == sorted(widths)  # each result is its own page's, in page order


def sent_size(body: dict) -> str:
    url = body["messages"][0]["content"][0]["image_url"]["url"]
    image = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    return f"{image.width}x{image.height}"


def test_a_dead_server_makes_the_model_unavailable_and_the_rest_works(openai_double, page):
    loader = served(openai_double, "qwen_vl_2b", retries=1, backoff_s=0.0)
    openai_double.stop()
    document = open_document("scan.png", png_bytes(page))
    try:
        with pytest.raises(ModelUnavailable) as caught:
            list(run_pages(loader, document, [0], "qwen_vl_2b", "text"))
        assert "cannot connect" in str(caught.value) and "\n" not in str(caught.value)
        health = loader.server_health("qwen_vl_2b")
        assert health is not None and not health.ok and not health.replicas[0].reachable
        (outcome,) = run_pages(loader, document, [0], "tesseract", "text")
        assert "Invoice" in outcome.result.text  # a local model on the same loader is untouched
        assert loader.server_health("tesseract") is None
    finally:
        loader.close()


def test_a_missing_api_key_shows_as_the_models_status(openai_double, monkeypatch):
    monkeypatch.delenv("TEST_VLLM_KEY", raising=False)
    loader = served(openai_double, "qwen_vl_2b", api_key_env="TEST_VLLM_KEY")
    try:
        availability = loader.status("qwen_vl_2b").availability
        assert (availability.available, availability.status) == (False, "no API key")
        assert availability.fix == "export TEST_VLLM_KEY=<the server's API key>"
        monkeypatch.setenv("TEST_VLLM_KEY", "s3cret")
        openai_double.api_key = "s3cret"
        assert loader.status("qwen_vl_2b").availability.available
        assert loader.server_health("qwen_vl_2b").ok
    finally:
        loader.close()


def test_health_is_cached_between_sidebar_reruns(openai_double):
    loader = served(openai_double, "qwen_vl_2b")
    try:
        first = loader.server_health("qwen_vl_2b")
        second = loader.server_health("qwen_vl_2b")
    finally:
        loader.close()
    assert first.ok and second is first and openai_double.models_requests == 1


def test_cli_ocr_runs_a_model_through_a_server_url(openai_double, page, tmp_path, capsys):
    openai_double.models = ["Qwen/Qwen3-VL-2B-Instruct"]
    openai_double.answer = "Invoice number 4521"
    path = tmp_path / "scan.png"
    path.write_bytes(png_bytes(page))
    code = cli.main(["ocr", str(path), "--model", "qwen3_vl_2b", "--backend", "openai", "--base-url",
                     openai_double.url, "--concurrency", "2", "--format", "json"])
    assert code == 0
    (page_json,) = json.loads(capsys.readouterr().out)["documents"][0]["pages"]
    assert (page_json["text"], page_json["model"], page_json["device"]) == ("Invoice number 4521", "qwen3_vl_2b",
                                                                            "server")
    assert cli.main(["ocr", str(path), "--model", "qwen3_vl_2b", "--base-url", openai_double.url]) == 2
    assert "--base-url and --concurrency need --backend openai" in capsys.readouterr().err


def test_the_api_lists_a_served_models_health(openai_double, tmp_path):
    openai_double.models = ["Qwen/Qwen2-VL-2B-Instruct"]
    settings = with_backend(cached_settings(), "qwen_vl_2b", "openai", openai_double.url)
    with TestClient(create_app(settings, store=Store(tmp_path / "results.db"))) as client:
        models = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
    served_model = models["qwen_vl_2b"]
    assert served_model["backend"] == "openai" and served_model["server"]["ok"]
    assert served_model["server"]["replicas"][0]["url"] == openai_double.url
    assert models["tesseract"]["backend"] == "local" and models["tesseract"]["server"] is None


def test_a_stream_stopped_by_the_caller_stops_the_request(openai_double, page):
    """Streamlit stops a script by raising in on_token; the request must not go on behind it."""
    openai_double.answer = "word " * 400
    openai_double.piece_delay_s = 0.002
    loader = served(openai_double, "qwen_vl_2b")
    seen = threading.Event()

    def stop(piece: str) -> None:
        seen.set()
        raise KeyboardInterrupt

    try:
        with pytest.raises(KeyboardInterrupt):
            loader.run("qwen_vl_2b", page, "text", on_token=stop)
    finally:
        loader.close()
    assert seen.is_set() and len(openai_double.requests) == 1  # not retried


def test_the_cpu_profile_does_not_shrink_a_servers_budget(openai_double, page):
    """The app's machine falling back to its CPU profile says nothing about the server's GPU."""
    loader = served(openai_double, "qwen_vl_2b")
    try:
        loader.run("tesseract", page, "text")  # the preflight picks this machine's profile (here: no GPU, CPU)
        loader.run("qwen_vl_2b", page, "text")
    finally:
        loader.close()
    spec = cached_settings().model("qwen_vl_2b")
    configured = QwenVLAdapter("qwen_vl_2b", spec, cached_settings().profile).input_size(page.size, RunOptions())
    assert sent_image(openai_double.requests[0]).size == configured
    assert openai_double.requests[0].body["max_completion_tokens"] == 2048  # not the CPU profile's 1024


def test_a_batch_job_sends_pages_concurrently_and_resumes_after_a_kill(openai_double, tmp_path):
    """`cli.py batch --backend openai`: pages go to the server up to the limit; killed mid-job and run
    again, every page has exactly one result, its own, in page order."""
    openai_double.models = ["Qwen/Qwen2-VL-2B-Instruct"]
    openai_double.delay_s = 0.3
    openai_double.answer = lambda body: f"page of {sent_size(body)}"
    pages = [render_text_page([f"Page {n}"], width=600 + 56 * n) for n in range(12)]
    scan = tmp_path / "twelve.tiff"
    pages[0].save(scan, format="TIFF", save_all=True, append_images=pages[1:])
    args = [sys.executable, "cli.py", "batch", str(scan), "--model", "qwen_vl_2b", "--backend", "openai",
            "--base-url", openai_double.url, "--concurrency", "3", "--out", str(tmp_path / "out"),
            "--db", str(tmp_path / "r.db"), "--format", "txt"]
    first = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_pages(tmp_path / "r.db", 4, first)
    finally:
        first.kill()
        first.wait()
    done_before = finished_pages(tmp_path / "r.db")
    assert 4 <= done_before < 12 and openai_double.max_in_flight == 3
    second = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stderr
    assert f"resuming job 1: {done_before} of 12 page(s) already finished" in second.stderr
    with sqlite3.connect(tmp_path / "r.db") as con:
        rows = con.execute("SELECT p.page, r.text FROM job_pages p JOIN results r ON r.id = p.result_id "
                           "ORDER BY p.page").fetchall()
        results = con.execute("SELECT count(*) FROM results").fetchone()[0]
    assert [page for page, _ in rows] == list(range(12)) and results == 12  # none lost, none twice
    widths = [int(text.split()[-1].split("x")[0]) for _, text in rows]
    assert widths == sorted(widths) and len(set(widths)) == 12  # each page's own answer
    assert len(openai_double.requests) <= 12 + 3  # at most the pages in flight at the kill were sent twice
