"""How fast the UI is in a real browser (headless Debian chromium through Playwright):

  first paint  from `streamlit run app.py` (a fresh server process) until the OCR page shows its
               uploader, the browser already started;
  run          from the click on Run until the recognised text of a full-page Tesseract result is on
               screen, on a warm worker (a first run starts it), minus the inference time the page
               itself reports: what the UI adds.
  bare app     the same click-to-text steps on a two-widget Streamlit app whose button waits a fixed
               time and then shows a text box: what any Streamlit page costs on this machine and
               browser, for scale.

    python benchmarks/bench_ui.py [--runs 5] [--results 3] [--image PATH] [--root DIR [--root DIR2]]

Each run starts its own server on a free local port with an empty results store; the medians and the
ranges over the runs are printed. `--root` measures another checkout of the app (e.g. an older commit)
with the same browser steps; given twice, the two are measured in turn, run after run, so that a
machine whose load changes meanwhile weighs on both alike.
"""
from __future__ import annotations

import argparse
import io
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import (  # noqa: E402
    CHROMIUM,
    CHROMIUM_ARGS,
    free_port,
    render_text_page,
    stop_process,
    streamlit_healthy,
)

SHARED_PAGE = ROOT.parent / "shared" / "data" / "images" / "en_scribe_singlecol_01.png"
INFERENCE = re.compile(r"[Ii]nference\s*(\d+(?:\.\d+)?) s")
ROUND_TRIP = re.compile(r"(\d+(?:\.\d+)?) s with the worker round trip")
WAIT_TEXT = ("() => [...document.querySelectorAll('textarea')].some(t => t.getAttribute('aria-label') === "
             "'Recognised text' && t.value.trim().length > 0)")


def start_server(root: Path, store: Path) -> tuple[subprocess.Popen, str, float]:
    """The server process, its URL, and the time it was started (perf_counter)."""
    port = free_port()
    env = dict(os.environ, STREAMLIT_BROWSER_GATHER_USAGE_STATS="false", OCR_STORE_DB=str(store),
               OCR_LOCAL_SETTINGS=str(store.with_suffix(".settings.json")))
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
                                "--server.address", "127.0.0.1", "--server.headless", "true"],
                               cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return process, f"http://127.0.0.1:{port}", started


def wait_healthy(url: str) -> None:
    if not streamlit_healthy(url, pause=0.02):  # polled often: the time it took is a figure here
        raise RuntimeError("the server did not become healthy")


BARE_WAIT_S = 1.0
BARE_APP = f"""import time
import streamlit as st
st.file_uploader("Scans or PDFs")
if st.button("Run Tesseract"):
    time.sleep({BARE_WAIT_S})
    st.text_area("Recognised text", "the quick brown fox " * 200, height=480)
"""


def bare_app_overheads(browser, folder: Path, results: int) -> list[float]:
    """Click-to-text of the bare app beyond its fixed wait, `results` times on one fresh server."""
    (folder / "app.py").write_text(BARE_APP, encoding="utf-8")
    process, url, _ = start_server(folder, folder / "unused.db")
    try:
        wait_healthy(url)
        found = []
        for _ in range(results + 1):  # the first click warms the server up and is not counted
            context = browser.new_context(viewport={"width": 1400, "height": 1000})
            try:
                tab = context.new_page()
                tab.goto(url)
                run = tab.get_by_role("button", name="Run Tesseract")
                run.wait_for()
                clicked = time.perf_counter()
                run.click()
                tab.wait_for_function(WAIT_TEXT, polling="raf")
                found.append(time.perf_counter() - clicked - BARE_WAIT_S)
            finally:
                context.close()
        return found[1:]
    finally:
        stop_process(process)


def page_png(path: Path | None) -> tuple[str, bytes]:
    if path is not None and path.exists():
        return path.name, path.read_bytes()
    # No shared scan here: an A4 page at 200 dpi full of text stands in for it.
    lines = [f"Line {n:02d}: the quick brown fox jumps over the lazy dog, invoice {4500 + n}" for n in range(40)]
    image = render_text_page(lines, size=30, width=1654)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "generated_a4.png", buffer.getvalue()


def one_result(browser, url: str, name: str, data: bytes) -> tuple[float, float, float | None]:
    """A new tab: upload, click Run, wait for the text; (seconds from the click, inference seconds shown,
    the worker call's seconds where the page shows them)."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    try:
        tab = context.new_page()
        tab.set_default_timeout(120_000)
        tab.goto(url)
        tab.locator("input[type=file]").first.set_input_files([{"name": name, "mimeType": "image/png",
                                                                "buffer": data}])
        run = tab.get_by_role("button", name=re.compile(r"^Run Tesseract"))
        run.wait_for()
        tab.wait_for_function("b => !b.disabled", arg=run.element_handle())
        clicked = time.perf_counter()
        run.click()
        tab.wait_for_function(WAIT_TEXT, polling="raf")
        shown = time.perf_counter() - clicked
        text = tab.locator("body").inner_text()
        found = INFERENCE.search(text)
        if found is None:
            raise RuntimeError("the page shows no inference time")
        call = ROUND_TRIP.search(text)
        return shown, float(found.group(1)), float(call.group(1)) if call else None
    finally:
        context.close()


def summary(values: list[float]) -> str:
    return f"median {statistics.median(values):.2f} s (range {min(values):.2f}-{max(values):.2f}, n={len(values)})"


def measure(browser, root: Path, store: Path, image: tuple[str, bytes],
            results: int) -> tuple[float, float, list[float], list[float], list[float]]:
    """One fresh server: (healthy after, first paint after, [seconds to each result], [overhead beyond the
    inference of each], [overhead beyond the worker call of each, where the page shows that call])."""
    name, data = image
    process, url, started = start_server(root, store)
    try:
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        tab = context.new_page()
        tab.set_default_timeout(120_000)
        wait_healthy(url)
        healthy = time.perf_counter() - started
        tab.goto(url)
        tab.locator("[data-testid=stFileUploaderDropzone]").first.wait_for(state="visible")
        paint = time.perf_counter() - started
        context.close()
        one_result(browser, url, name, data)  # starts the worker and loads Tesseract
        totals, overheads, beyond_call = [], [], []
        for _ in range(results):
            shown, inference, call = one_result(browser, url, name, data)
            totals.append(shown)
            overheads.append(shown - inference)
            if call is not None:
                beyond_call.append(shown - call)
        return healthy, paint, totals, overheads, beyond_call
    finally:
        stop_process(process)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="fresh servers (first paint is measured on each)")
    parser.add_argument("--results", type=int, default=3, help="Tesseract results timed per server, worker warm")
    parser.add_argument("--image", type=Path, default=SHARED_PAGE, help="the full page to recognise")
    parser.add_argument("--root", type=Path, action="append", help="a checkout of the app to measure (default: "
                        "this one); twice to measure two in turn")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    roots = [root.resolve() for root in (args.root or [ROOT])]
    image = page_png(args.image)
    bare: list[float] = []
    figures: dict[Path, dict[str, list[float]]] = {
        root: {"healthy": [], "paint": [], "total": [], "overhead": [], "beyond_call": []} for root in roots}
    with sync_playwright() as p, tempfile.TemporaryDirectory() as scratch:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        for run in range(args.runs):
            for number, root in enumerate(roots if run % 2 == 0 else roots[::-1]):
                healthy, paint, totals, overheads, beyond_call = measure(
                    browser, root, Path(scratch) / f"run{run}_{number}.db", image, args.results)
                got = figures[root]
                got["healthy"].append(healthy)
                got["paint"].append(paint)
                got["total"] += totals
                got["overhead"] += overheads
                got["beyond_call"] += beyond_call
                print(f"run {run + 1} {root}: healthy {healthy:.2f} s, first paint {paint:.2f} s; results "
                      f"{', '.join(f'{t:.2f}' for t in totals)} s after the click; UI overhead "
                      f"{', '.join(f'{o:.2f}' for o in overheads)} s", flush=True)
            bare_folder = Path(scratch) / f"bare{run}"
            bare_folder.mkdir()
            bare += bare_app_overheads(browser, bare_folder, args.results)
        browser.close()
    load = os.getloadavg()
    print(f"\npage {image[0]} · {os.cpu_count()} cores · load average now {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
    print(f"\nbare two-widget Streamlit app, click to text beyond its wait: {summary(bare)}")
    for root, got in figures.items():
        print(f"\n{root}")
        print(f"  server healthy after `streamlit run`:               {summary(got['healthy'])}")
        print(f"  first paint of the OCR page after `streamlit run`: {summary(got['paint'])}")
        print(f"  full-page Tesseract result on screen after Run:    {summary(got['total'])}")
        print(f"  UI overhead beyond the reported inference:          {summary(got['overhead'])}")
        if got["beyond_call"]:  # the image's trip to the worker and back is not the UI's
            print(f"  ...beyond the worker call (image trip excluded):    {summary(got['beyond_call'])}")


if __name__ == "__main__":
    main()
