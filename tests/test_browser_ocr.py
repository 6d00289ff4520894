"""The OCR page in a real browser (headless Debian chromium): upload, run, read, download."""
import pytest

from tests.conftest import serve_app

pytestmark = pytest.mark.browser


def test_upload_run_text_visible_and_download(page, app_url, ru_en_png, tmp_path):
    page.goto(app_url)
    page.get_by_text("Upload one or more documents to start.").wait_for()
    page.locator("input[type=file]").first.set_input_files(
        [{"name": "invoice.png", "mimeType": "image/png", "buffer": ru_en_png}])
    page.get_by_role("button", name="Run Tesseract").click()
    text_area = page.get_by_label("Recognised text")
    text_area.wait_for()
    page.wait_for_function(
        "() => [...document.querySelectorAll('textarea')].some(t => t.value.includes('Invoice number 4521'))")
    assert "Счёт на оплату" in text_area.input_value()
    with page.expect_download() as download_info:
        page.get_by_role("button", name="⬇ TXT").click()
    saved = tmp_path / download_info.value.suggested_filename
    download_info.value.save_as(saved)
    assert saved.name == "invoice_tesseract.txt" or saved.name.startswith("invoice")
    assert "Invoice number 4521" in saved.read_text(encoding="utf-8")


def test_corrupt_upload_shows_one_line_and_app_keeps_working(page, app_url, ru_en_png):
    page.goto(app_url)
    page.locator("input[type=file]").first.set_input_files(
        [{"name": "broken.png", "mimeType": "image/png", "buffer": ru_en_png[:400]}])
    page.get_by_text("broken.png: the image data is damaged").wait_for()
    assert page.get_by_text("Traceback").count() == 0
    page.locator("input[type=file]").first.set_input_files(
        [{"name": "invoice.png", "mimeType": "image/png", "buffer": ru_en_png}])
    page.get_by_role("button", name="Run Tesseract").click()
    page.wait_for_function(
        "() => [...document.querySelectorAll('textarea')].some(t => t.value.includes('Invoice number 4521'))")


def test_a_page_url_on_a_fresh_server_keeps_the_sidebar(browser):
    with serve_app() as url:
        context = browser.new_context()
        tab = context.new_page()
        tab.set_default_timeout(60_000)
        tab.goto(f"{url}/system")
        tab.locator("[data-testid=stSidebar]").get_by_role("heading", name="Model", exact=True).wait_for()
        tab.get_by_text("GPU preflight").wait_for()
        assert tab.url.endswith("/system")
        context.close()
