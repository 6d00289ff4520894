"""A model on a vLLM-style server, through the UI in a real browser: its health in the sidebar, a page run
through the server URL with the answer streamed, and a dead server's clear error. The server is the
protocol test double (tests/openai_double.py)."""
from __future__ import annotations

import pytest
import yaml

from tests.conftest import serve_app
from utils.config import DEFAULT_CONFIG

pytestmark = pytest.mark.browser
MODEL, LABEL, HUB_ID = "qwen3_vl_2b", "Qwen3-VL 2B Instruct", "Qwen/Qwen3-VL-2B-Instruct"
ANSWER = "Invoice number 4521 read by the served model. " * 3


def _config(tmp_path, base_url: str):
    data = yaml.safe_load(DEFAULT_CONFIG.read_text(encoding="utf-8"))
    data["default_models"] = [MODEL, "tesseract"]
    data["models"][MODEL].update(backend="openai", server={"base_url": base_url, "retries": 0, "timeout_s": 10})
    path = tmp_path / "served.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return path


def _open(browser, url):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    tab = context.new_page()
    tab.set_default_timeout(60_000)
    tab.goto(url)
    return context, tab


def test_a_page_runs_through_a_server_url_streamed_with_its_health_shown(browser, openai_double, tmp_path, ru_en_png):
    openai_double.models = [HUB_ID]
    openai_double.answer = ANSWER
    openai_double.piece_delay_s = 0.02
    env = {"OCR_CONFIG": str(_config(tmp_path, openai_double.url)), "OCR_STORE_DB": str(tmp_path / "store.db")}
    with serve_app(env) as url:
        context, tab = _open(browser, url)
        sidebar = tab.locator("[data-testid=stSidebar]")
        sidebar.get_by_text(f"{HUB_ID} served (").wait_for()
        tab.locator("input[type=file]").first.set_input_files(
            [{"name": "invoice.png", "mimeType": "image/png", "buffer": ru_en_png}])
        tab.get_by_role("button", name=f"Run {LABEL}").click()
        tab.wait_for_function(
            "() => [...document.querySelectorAll('textarea')].some(t => t.value.includes('read by the served model'))")
        assert tab.get_by_text("Traceback").count() == 0
        context.close()
    (request,) = [r for r in openai_double.requests if r.image_urls]
    assert request.body["stream"] is True and request.body["model"] == HUB_ID
    assert request.body["temperature"] == 0


def test_a_dead_server_is_one_clear_line_and_the_page_keeps_working(browser, tmp_path, ru_en_png):
    env = {"OCR_CONFIG": str(_config(tmp_path, "http://127.0.0.1:9/v1")), "OCR_STORE_DB": str(tmp_path / "store.db")}
    with serve_app(env) as url:
        context, tab = _open(browser, url)
        sidebar = tab.locator("[data-testid=stSidebar]")
        alert = sidebar.locator("[data-testid=stAlert]").filter(has_text="127.0.0.1:9")
        alert.first.wait_for()
        assert "cannot connect" in alert.first.inner_text() and alert.first.inner_text().count("\n") <= 1
        tab.locator("input[type=file]").first.set_input_files(
            [{"name": "invoice.png", "mimeType": "image/png", "buffer": ru_en_png}])
        assert tab.get_by_text("Traceback").count() == 0
        context.close()
