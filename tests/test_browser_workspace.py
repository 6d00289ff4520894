"""Issue 12's flows end to end in headless chromium against `streamlit run app.py`.

1. work never vanishes: OCR -> Compare -> System -> Compare -> OCR keeps the document, the result and the
   reference; a refresh and a server restart bring them back with one click;
2. an edit is kept as a correction and the download gives it;
3. a run of pages 2-3 shows page 2, the strip marks the pages read, moving keeps "Pages to run";
4. Stop ends a long run after the page being read; Run is disabled while it runs, the page stays visible,
   the phase and the elapsed time show;
5. a second user's page waits behind the first user's run and says how many requests are ahead;
and the details: copy button, no cut-off figures at 800 px.

With SCREENSHOTS_DIR set, the tests save the README's screenshots (OCR, Compare, History, System) there.
"""
from __future__ import annotations

import io
import os
import re
from pathlib import Path

import pytest

from tests.conftest import png_bytes, render_text_page, serve_app
from tests.test_documents import make_pdf

pytestmark = pytest.mark.browser

LINES = ["Invoice 4521 for March services", "Please pay within fourteen days", "Total due: 1 250 roubles"]
SHOTS = os.environ.get("SCREENSHOTS_DIR")


@pytest.fixture(scope="module")
def invoice() -> dict:
    return {"name": "invoice.png", "mimeType": "image/png", "buffer": png_bytes(render_text_page(LINES, size=32))}


def new_tab(browser, width: int = 1400, height: int = 1000):
    context = browser.new_context(viewport={"width": width, "height": height}, accept_downloads=True)
    tab = context.new_page()
    tab.set_default_timeout(90_000)
    return context, tab


def recognised(tab) -> str:
    return tab.get_by_role("textbox", name="Recognised text").input_value()


def wait_text(tab, words: str) -> None:
    tab.wait_for_function("w => [...document.querySelectorAll('textarea')].some(t => t.value.includes(w))",
                          arg=words)


def wait_value(tab, label: str, value: str) -> None:
    """Until the box labelled `label` holds `value` (a page drawn again fills its boxes as it goes)."""
    tab.wait_for_function("([l, v]) => [...document.querySelectorAll('textarea')].some("
                          "t => t.getAttribute('aria-label') === l && t.value === v)", arg=[label, value],
                          timeout=15_000)


def upload(tab, *files: dict) -> None:
    tab.get_by_test_id("stFileUploader").first.locator("input[type=file]").set_input_files(list(files))


def go(tab, page: str) -> None:
    """Through the sidebar's navigation, as a user moves between pages (the session stays)."""
    tab.get_by_test_id("stSidebarNav").get_by_role("link", name=page, exact=True).click()
    tab.get_by_role("heading", name="Compare models" if page == "Compare" else page, exact=True).wait_for()


def settle(tab) -> None:
    """Until the script has finished its run and every element is drawn (no skeleton left)."""
    tab.wait_for_function("() => document.querySelector('[data-testid=stApp]')?.dataset.testScriptState"
                          " === 'notRunning' && !document.querySelector('[data-testid=stSkeleton]')")


def set_pages_to_run(tab, spec: str) -> None:
    """Type into "Pages to run" and wait for the page to take it."""
    box = tab.get_by_role("textbox", name="Pages to run")
    box.fill(spec)
    box.press("Enter")
    settle(tab)


def shot(tab, name: str, height: int | None = None) -> None:
    """The README's screenshot of this page, when SCREENSHOTS_DIR says where; `height` makes the window
    that tall for it (the app scrolls inside its own pane, which a full-page shot does not unroll)."""
    if not SHOTS:
        return
    Path(SHOTS).mkdir(parents=True, exist_ok=True)
    size = tab.viewport_size
    if height:
        tab.set_viewport_size({"width": size["width"], "height": height})
    settle(tab)
    tab.screenshot(path=str(Path(SHOTS) / f"{name}.png"))
    tab.set_viewport_size(size)


def test_work_never_vanishes_across_pages_a_refresh_and_a_restart(browser, invoice, tmp_path):
    env = {"OCR_STORE_DB": str(tmp_path / "results.db"), "OCR_LOCAL_SETTINGS": str(tmp_path / "settings.json")}
    reference = "\n".join(LINES)
    with serve_app(env) as url:
        context, tab = new_tab(browser)
        tab.goto(url)
        upload(tab, invoice)
        tab.get_by_role("button", name=re.compile("^Run Tesseract")).click()
        wait_text(tab, "Invoice 4521")
        first = recognised(tab)
        shot(tab, "ocr")

        go(tab, "Compare")
        tab.get_by_text("invoice.png").first.wait_for()  # the OCR page's document is open here too
        box = tab.get_by_role("textbox", name="Reference text (optional)")
        box.fill(reference)
        box.press("Control+Enter")
        settle(tab)
        go(tab, "System")
        go(tab, "Compare")
        wait_value(tab, "Reference text (optional)", reference)
        tab.get_by_role("button", name="Run 2 models").click()
        tab.get_by_test_id("stTable").locator("tbody tr").nth(1).wait_for()  # both models scored
        shot(tab, "compare", height=2200)

        go(tab, "OCR")
        wait_text(tab, "Invoice 4521")
        assert recognised(tab) == first

        tab.reload()  # a refresh: a new session
        tab.get_by_role("button", name="Restore last session").click()
        wait_text(tab, "Invoice 4521")
        assert recognised(tab) == first
        context.close()

    with serve_app(env) as url:  # a restart: only the store remembers
        context, tab = new_tab(browser)
        tab.goto(url)
        tab.get_by_text("Your last session").wait_for()
        tab.get_by_role("button", name="Restore last session").click()
        wait_text(tab, "Invoice 4521")
        assert recognised(tab) == first
        go(tab, "Compare")
        wait_value(tab, "Reference text (optional)", reference)
        go(tab, "History")
        tab.get_by_role("heading", name=re.compile("invoice.png, page 1")).wait_for()
        shot(tab, "history")
        go(tab, "System")
        tab.get_by_text("GPU preflight").wait_for()
        shot(tab, "system")
        context.close()


def test_an_edit_is_kept_and_downloaded(page, app_url, invoice, tmp_path):
    page.goto(app_url)
    upload(page, invoice)
    page.get_by_role("button", name=re.compile("^Run Tesseract")).click()
    wait_text(page, "Invoice 4521")
    box = page.get_by_role("textbox", name="Recognised text")
    corrected = box.input_value().replace("4521", "4527")
    box.fill(corrected)
    box.press("Control+Enter")
    page.get_by_text("✎ Corrected by you").wait_for()
    with page.expect_download() as download:
        page.get_by_role("button", name="⬇ TXT").click()
    assert download.value.suggested_filename == "invoice_text_tesseract.txt"
    saved = tmp_path / "invoice.txt"
    download.value.save_as(saved)
    assert saved.read_text(encoding="utf-8") == corrected


def test_pages_2_3_show_page_2_and_moving_keeps_the_selection(page, app_url):
    page.goto(app_url)
    upload(page, {"name": "report.pdf", "mimeType": "application/pdf", "buffer": make_pdf(4)})
    set_pages_to_run(page, "2-3")
    page.get_by_role("button", name=re.compile("^Run Tesseract")).click()
    wait_text(page, "Quarterly report, page 2")
    assert page.get_by_role("spinbutton", name="Page (of 4)").input_value() == "2"
    page.get_by_role("button", name="3 ✓").click()
    wait_text(page, "Quarterly report, page 3")
    assert page.get_by_role("textbox", name="Pages to run").input_value() == "2-3"
    assert page.get_by_role("button", name="2 ✓").count() == 1 and page.get_by_role("button", name="4").count() == 1


def test_stop_ends_a_long_run_after_the_page_being_read(page, app_url):
    page.goto(app_url)
    upload(page, {"name": "long.pdf", "mimeType": "application/pdf", "buffer": make_pdf(30)})
    set_pages_to_run(page, "")
    run = page.get_by_role("button", name=re.compile("^Run Tesseract"))
    run.click()
    page.get_by_text(re.compile(r"page \d+ \(\d+ of 30\) · [\d.]+ s — [\d.]+ s in all")).wait_for()
    assert run.is_disabled()
    assert page.get_by_text("A run is going on").count() == 1
    assert page.get_by_test_id("stImage").count() >= 1  # the page stays on screen
    stop = page.get_by_role("button", name="Stop run")
    stop.click()
    stop.wait_for(state="detached")  # the run has ended
    page.get_by_text(re.compile(r"page\(s\) of long.pdf recognised")).wait_for()
    done = int(re.search(r"(\d+) page\(s\) of long.pdf recognised",
                         page.get_by_text(re.compile("recognised with")).inner_text()).group(1))
    assert 1 <= done < 30
    assert page.get_by_role("button", name=re.compile("^Run Tesseract")).is_enabled()


def test_a_request_behind_another_users_run_says_how_many_are_ahead(browser, app_url, invoice):
    pages = [render_text_page([f"Page {n} line {i}: the quick brown fox jumps over the lazy dog" for i in range(14)],
                              size=30) for n in range(1, 9)]
    buffer = io.BytesIO()
    pages[0].save(buffer, format="PDF", save_all=True, append_images=pages[1:], resolution=200)
    first, busy = new_tab(browser)
    second, waiting = new_tab(browser)
    try:
        busy.goto(app_url)
        upload(busy, {"name": "long.pdf", "mimeType": "application/pdf", "buffer": buffer.getvalue()})
        set_pages_to_run(busy, "")
        waiting.goto(app_url)
        upload(waiting, invoice)
        waiting.get_by_role("button", name=re.compile("^Run Tesseract")).wait_for()
        busy.get_by_role("button", name=re.compile("^Run Tesseract")).click()
        busy.get_by_text(re.compile(r"page \d+ \(\d+ of 8\)")).wait_for()
        waiting.get_by_role("button", name=re.compile("^Run Tesseract")).click()
        waiting.get_by_text(re.compile(r"Waiting for the worker: 1 request ahead")).wait_for(timeout=30_000)
        wait_text(waiting, "Invoice 4521")  # its turn came
    finally:
        first.close()
        second.close()


def test_copy_button_puts_the_text_on_the_clipboard(browser, app_url, invoice):
    context, tab = new_tab(browser)
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=app_url)
    try:
        tab.goto(app_url)
        upload(tab, invoice)
        tab.get_by_role("button", name=re.compile("^Run Tesseract")).click()
        wait_text(tab, "Invoice 4521")
        tab.get_by_role("button", name="Copy text").click()
        tab.get_by_role("button", name="✓ Copied").wait_for()
        assert tab.evaluate("navigator.clipboard.readText()") == recognised(tab)
    finally:
        context.close()


def test_nothing_is_cut_off_at_800_px(browser, app_url, invoice):
    context, tab = new_tab(browser, width=800)
    try:
        tab.goto(app_url)
        upload(tab, invoice)
        tab.get_by_role("button", name=re.compile("^Run Tesseract")).click()
        wait_text(tab, "Invoice 4521")
        line = tab.get_by_text(re.compile(r"^cpu.* · inference [\d.]+ s"))
        line.wait_for()
        assert "…" not in line.inner_text()
        cut = tab.evaluate("""() => [...document.querySelectorAll('[data-testid=stMain] *')]
            .filter(e => e.children.length === 0 && e.textContent.trim() && e.scrollWidth > e.clientWidth + 1
                    && getComputedStyle(e).textOverflow === 'ellipsis').map(e => e.textContent)""")
        assert cut == []
        assert tab.get_by_test_id("stMetric").count() == 0
    finally:
        context.close()
