"""How fast the UI is in a real browser (headless Debian chromium through Playwright):

  first paint  from `streamlit run app.py` (a fresh server process) until the OCR page shows its
               uploader, the browser already started;
  run          from the click on Run until the recognised text of a full-page Tesseract result is on
               screen, on a warm worker (a first run starts it), minus the inference time the page
               itself reports: what the UI adds.

    python benchmarks/bench_ui.py [--runs 5] [--results 3] [--image PATH] [--root DIR]

Each run starts its own server on a free local port with an empty results store; the medians and the
ranges over the runs are printed. `--root` measures another checkout of the app (e.g. an older commit)
with the same browser steps.
"""
from __future__ import annotations

import argparse
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import CHROMIUM, CHROMIUM_ARGS, render_text_page  # noqa: E402

SHARED_PAGE = ROOT.parent / "shared" / "data" / "images" / "en_scribe_singlecol_01.png"
INFERENCE = re.compile(r"[Ii]nference\s*(\d+(?:\.\d+)?) s")
WAIT_TEXT = ("() => [...document.querySelectorAll('textarea')].some(t => t.getAttribute('aria-label') === "
             "'Recognised text' && t.value.trim().length > 0)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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


def wait_healthy(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as reply:
                if reply.read().strip() == b"ok":
                    return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError("the server did not become healthy")


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def page_png(path: Path | None) -> tuple[str, bytes]:
    if path is not None and path.exists():
        return path.name, path.read_bytes()
    # No shared scan here: an A4 page at 200 dpi full of text stands in for it.
    lines = [f"Line {n:02d}: the quick brown fox jumps over the lazy dog, invoice {4500 + n}" for n in range(40)]
    image = render_text_page(lines, size=30, width=1654)
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "generated_a4.png", buffer.getvalue()


def one_result(browser, url: str, name: str, data: bytes) -> tuple[float, float]:
    """A new tab: upload, click Run, wait for the text; (seconds from the click, inference seconds shown)."""
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
        found = INFERENCE.search(tab.locator("body").inner_text())
        if found is None:
            raise RuntimeError("the page shows no inference time")
        return shown, float(found.group(1))
    finally:
        context.close()


def summary(values: list[float]) -> str:
    return f"median {statistics.median(values):.2f} s (range {min(values):.2f}-{max(values):.2f}, n={len(values)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="fresh servers (first paint is measured on each)")
    parser.add_argument("--results", type=int, default=3, help="Tesseract results timed per server, worker warm")
    parser.add_argument("--image", type=Path, default=SHARED_PAGE, help="the full page to recognise")
    parser.add_argument("--root", type=Path, default=ROOT, help="the checkout of the app to measure")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    name, data = page_png(args.image)
    paints: list[float] = []
    healthy: list[float] = []
    totals: list[float] = []
    overheads: list[float] = []
    with sync_playwright() as p, tempfile.TemporaryDirectory() as scratch:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        for run in range(args.runs):
            process, url, started = start_server(args.root.resolve(), Path(scratch) / f"run{run}.db")
            try:
                context = browser.new_context(viewport={"width": 1400, "height": 1000})
                tab = context.new_page()
                tab.set_default_timeout(120_000)
                wait_healthy(url)
                healthy.append(time.perf_counter() - started)
                tab.goto(url)
                tab.locator("[data-testid=stFileUploaderDropzone]").first.wait_for(state="visible")
                paints.append(time.perf_counter() - started)
                context.close()
                one_result(browser, url, name, data)  # starts the worker and loads Tesseract
                for _ in range(args.results):
                    shown, inference = one_result(browser, url, name, data)
                    totals.append(shown)
                    overheads.append(shown - inference)
            finally:
                stop(process)
            print(f"run {run + 1}: server healthy {healthy[-1]:.2f} s, first paint {paints[-1]:.2f} s; results {', '.join(f'{t:.2f}' for t in totals[-args.results:])} s "
                  f"after the click; UI overhead {', '.join(f'{o:.2f}' for o in overheads[-args.results:])} s",
                  flush=True)
        browser.close()
    load = os.getloadavg()
    print(f"\n{args.root.resolve()} · page {name} · {os.cpu_count()} cores · load average {load[0]:.1f} "
          f"{load[1]:.1f} {load[2]:.1f}")
    print(f"server healthy after `streamlit run`:               {summary(healthy)}")
    print(f"first paint of the OCR page after `streamlit run`: {summary(paints)}")
    print(f"full-page Tesseract result on screen after Run:    {summary(totals)}")
    print(f"UI overhead beyond the reported inference:          {summary(overheads)}")


if __name__ == "__main__":
    main()
