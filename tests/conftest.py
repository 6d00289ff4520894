"""Shared test helpers: pages rendered on the spot, the optional shared data, a live app for browsers."""
from __future__ import annotations

import contextlib
import io
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
from PIL import Image, ImageDraw, ImageFont

from tests.openai_double import openai_double  # noqa: F401 - the protocol double's fixture, for every test

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"
FONT_CANDIDATES = ("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", "/usr/share/fonts/TTF/DejaVuSans.ttf")
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]

RU_EN_LINES = [
    "Invoice number 4521 dated 12 March 2024",
    "Счёт на оплату услуг связи за март",
    "Total amount due: 1 250 roubles",
    "Получатель: общество с ограниченной ответственностью",
    "Please pay within fourteen days",
    "Спасибо за своевременную оплату",
]


def dp_levenshtein(a, b) -> int:
    """Plain dynamic-programming edit distance: the independent check on the library's figures."""
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        current = [i]
        for j, y in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
        previous = current
    return previous[-1]


def font(size: int = 34) -> ImageFont.FreeTypeFont:
    for path in FONT_CANDIDATES:
        if Path(path).exists():
            return ImageFont.truetype(path, size)
    pytest.skip("DejaVu fonts are not installed (apt-get install fonts-dejavu-core)")


def render_text_page(lines: list[str], size: int = 34, width: int = 1400) -> Image.Image:
    """A clean white page with the lines in black, like a 200 dpi render."""
    face = font(size)
    line_height = int(size * 1.9)
    image = Image.new("RGB", (width, 120 + line_height * len(lines)), "white")
    draw = ImageDraw.Draw(image)
    for row, line in enumerate(lines):
        draw.text((80, 60 + row * line_height), line, fill="black", font=face)
    return image


def png_bytes(image: Image.Image, fmt: str = "PNG", **save_args) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save_args)
    return buffer.getvalue()


@pytest.fixture(scope="session")
def ru_en_page() -> Image.Image:
    return render_text_page(RU_EN_LINES)


@pytest.fixture(scope="session")
def ru_en_png(ru_en_page) -> bytes:
    return png_bytes(ru_en_page)


@pytest.fixture
def shared_data() -> Path:
    if not (SHARED_DATA / "images").is_dir():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def streamlit_healthy(url: str, timeout: float = 60, pause: float = 0.3) -> bool:
    """Whether the Streamlit server at `url` answered its health check within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as reply:
                if reply.read().strip() == b"ok":
                    return True
        except OSError:
            time.sleep(pause)
    return False


def stop_process(process: subprocess.Popen, timeout: float = 15) -> None:
    """Terminate, and kill what does not end within `timeout` seconds."""
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextlib.contextmanager
def serve_app(env: dict[str, str] | None = None):
    """`streamlit run app.py` on a free local port, healthy before it is handed out; `env` is added to
    the server's environment. Unless `env` says otherwise, the results store and the local settings
    are in a folder of their own, removed afterwards: a test never writes into data/."""
    port = free_port()
    scratch = tempfile.TemporaryDirectory(prefix="ocr-app-")
    env = dict(os.environ, STREAMLIT_BROWSER_GATHER_USAGE_STATS="false",
               **{"OCR_STORE_DB": str(Path(scratch.name) / "results.db"),
                  "OCR_LOCAL_SETTINGS": str(Path(scratch.name) / "local_settings.json"), **(env or {})})
    process = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
         "--server.address", "127.0.0.1", "--server.headless", "true"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        if not streamlit_healthy(url):
            pytest.fail("streamlit did not become healthy within 60 s")
        yield url
    finally:
        stop_process(process)
        scratch.cleanup()


@pytest.fixture(scope="session")
def app_url():
    with serve_app() as url:
        yield url


@pytest.fixture(scope="session")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian chromium is not installed (apt-get install chromium)")
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        instance = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield instance
        instance.close()


@pytest.fixture
def page(browser, app_url):
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    tab = context.new_page()
    tab.set_default_timeout(60_000)
    yield tab
    context.close()


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    gpu_items = [item for item in items if "gpu" in item.keywords]
    if gpu_items and not _cuda_available():
        skip = pytest.mark.skip(reason="needs a CUDA GPU")
        for item in gpu_items:
            item.add_marker(skip)


@pytest.fixture
def app_test(monkeypatch, tmp_path):
    """AppTest of app.py, every rerun going through app.py as on a live server.

    AppTest re-detects the pages/ folder before each run and then reruns only the page script
    (Streamlit's legacy multipage mode); a live server leaves that mode once app.py calls
    st.navigation, which is what this reproduces.
    """
    from streamlit.runtime.pages_manager import PagesManager
    from streamlit.testing.v1 import AppTest

    original_init = PagesManager.__init__

    def init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        PagesManager.uses_pages_directory = False

    monkeypatch.setattr(PagesManager, "__init__", init)

    def start(timeout: float = 120) -> AppTest:
        # The app's results store and local settings: the test's own (restoring the last session must not
        # find another test's), unless the test set them already.
        for variable, name in (("OCR_STORE_DB", "results.db"), ("OCR_LOCAL_SETTINGS", "local_settings.json")):
            if os.environ.get(variable) in (None, _SESSION_FILES.get(variable)):
                monkeypatch.setenv(variable, str(tmp_path / name))
        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=timeout)
        at.run()
        assert not at.exception, at.exception
        return at

    return start


_SESSION_FILES: dict[str, str] = {}  # the throwaway files below, by environment variable


@pytest.fixture(scope="session", autouse=True)
def results_store_outside_the_checkout(tmp_path_factory):
    """Pages, servers and CLI runs started by tests keep their results (and local settings) in throwaway
    files, never in the checkout's data/; a test that needs its own sets OCR_STORE_DB itself."""
    folder = tmp_path_factory.mktemp("store")
    previous = {variable: os.environ.get(variable) for variable in ("OCR_STORE_DB", "OCR_LOCAL_SETTINGS")}
    _SESSION_FILES.update(OCR_STORE_DB=str(folder / "results.db"),
                          OCR_LOCAL_SETTINGS=str(folder / "local_settings.json"))
    os.environ.update(_SESSION_FILES)
    yield
    for variable, value in previous.items():
        if value is None:
            os.environ.pop(variable, None)
        else:
            os.environ[variable] = value
