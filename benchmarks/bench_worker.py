"""What the worker process costs: per-page time through Loader (worker) vs AdapterPool in-process,
the time from an injected sticky fault to the delivered result, and what a page of a classic engine
waits while the models worker is busy with another request.

    python benchmarks/bench_worker.py [DIR] [--model tesseract] [--rounds 3] [--limit N]

Both paths use the same settings (the profile the preflight picks) and the same decoded pages, warmed
up first. Each page is timed alternately on both paths, `--rounds` times; the best time per page and
path counts, so the noise of a shared machine does not land on one side only.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from utils.config import cached_settings  # noqa: E402
from utils.documents.reader import EXTENSIONS, open_path  # noqa: E402
from utils.engine import fault_injection  # noqa: E402
from utils.engine.loader import Loader  # noqa: E402
from utils.engine.pool import AdapterPool  # noqa: E402

DEFAULT_DIR = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "images"


def load_pages(folder: Path, limit: int | None) -> list[tuple[str, Image.Image]]:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in EXTENSIONS and p.suffix.lower() != ".pdf")
    pages = []
    for path in files[:limit]:
        document = open_path(path)
        for index in range(document.page_count):
            image = document.render(index).image
            pages.append((f"{path.name}#{index + 1}", image))
    return pages


def timed(call, *args, **kwargs) -> float:
    started = time.perf_counter()
    call(*args, **kwargs)
    return time.perf_counter() - started


def overhead(pages, model: str, rounds: int) -> None:
    loader = Loader(cached_settings())
    loader.wait_for_preflight()
    pool = AdapterPool(loader.settings)  # the settings of the profile the preflight picked
    try:
        first = pages[0][1]
        cold_worker = timed(loader.run, model, first)
        cold_pool = timed(pool.run, model, first, "text")
        print(f"profile {loader.profile_name}; first page incl. start-up and load: worker {cold_worker:.2f} s, "
              f"in-process {cold_pool:.2f} s")
        best_worker = [float("inf")] * len(pages)
        best_pool = [float("inf")] * len(pages)
        for _ in range(rounds):
            for i, (_name, image) in enumerate(pages):
                best_pool[i] = min(best_pool[i], timed(pool.run, model, image, "text"))
                best_worker[i] = min(best_worker[i], timed(loader.run, model, image))
    finally:
        loader.close()
        pool.close()
    print(f"\n{'page':<36} {'pixels':>10} {'in-process s':>13} {'worker s':>9} {'overhead':>9}")
    for (name, image), p, w in zip(pages, best_pool, best_worker):
        print(f"{name:<36} {image.width * image.height:>10,} {p:>13.3f} {w:>9.3f} {(w - p) * 1000:>7.1f}ms")
    total_pool, total_worker = sum(best_pool), sum(best_worker)
    ratios = [w / p - 1 for p, w in zip(best_pool, best_worker)]
    print(f"\n{len(pages)} pages, best of {rounds} rounds, after warm-up:")
    print(f"  in-process {total_pool:.2f} s ({total_pool / len(pages) * 1000:.0f} ms/page), "
          f"worker {total_worker:.2f} s ({total_worker / len(pages) * 1000:.0f} ms/page)")
    print(f"  overhead {(total_worker / total_pool - 1) * 100:+.1f}% in total, "
          f"median per page {statistics.median(ratios) * 100:+.1f}%, "
          f"mean {(total_worker - total_pool) / len(pages) * 1000:+.1f} ms/page")


def recovery(pages, model: str, fault: str) -> None:
    os.environ[fault_injection.ENV] = fault  # read by the worker the loader spawns
    loader = Loader(cached_settings())
    try:
        started = time.perf_counter()
        result = loader.run(model, pages[0][1])
        total = time.perf_counter() - started
        delivered = datetime.now(UTC)
        [event] = loader.recovery_events()
    finally:
        loader.close()
        del os.environ[fault_injection.ENV]
    since_fault = (delivered - event.time).total_seconds()
    load = result.load_seconds or 0.0
    print(f"{fault:<15} fault -> result {since_fault:5.2f} s = respawn {since_fault - load - result.seconds:4.2f} s"
          f" + model load {load:4.2f} s + page {result.seconds:4.2f} s; whole request {total:5.2f} s; "
          f"{result.profile}: {event.kind}, {event.action}")


def busy_models_worker(pages, model: str, other: str, seconds: float) -> None:
    """Pages of `model` (a CPU engine) while a request for `other` holds the models worker: it is made
    to hang (injected) for `seconds`, the deadline given to `other` here."""
    settings = cached_settings().model_copy(deep=True)
    settings.model(other).timeout_s = seconds
    os.environ[fault_injection.ENV] = "hang:1"
    loader = Loader(settings)
    del os.environ[fault_injection.ENV]  # the guard has read it
    ahead: list[int] = []
    try:
        held = threading.Thread(target=lambda: _ignore_errors(lambda: loader.run(other, pages[0][1])))
        held.start()
        while loader.system_info().faults_left:  # until the hang is on its way to the models worker
            time.sleep(0.01)
        loader.run(model, pages[0][1])  # the engine's worker started and its model loaded
        busy = [timed(loader.run, model, image, on_wait=ahead.append) for _name, image in pages]
        still_held = held.is_alive()
        held.join()
        idle = [timed(loader.run, model, image) for _name, image in pages]
    finally:
        loader.close()
    print(f"{len(pages)} {model} pages, p50 with the models worker idle {statistics.median(idle):.3f} s, "
          f"held by a {seconds:g} s {other} request {statistics.median(busy):.3f} s (max {max(busy):.3f} s); "
          f"requests ahead of them: {max(ahead, default=0)}; held to the end: {still_held}")


def _ignore_errors(call) -> None:
    try:
        call()
    except Exception as exc:  # the held request's own outcome is not what is measured
        print(f"  (held request ended: {type(exc).__name__})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir", nargs="?", default=str(DEFAULT_DIR))
    parser.add_argument("--model", default="tesseract")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--limit", type=int, help="at most this many files")
    args = parser.parse_args()
    pages = load_pages(Path(args.dir), args.limit)
    if not pages:
        print(f"no images in {args.dir}", file=sys.stderr)
        return 2
    overhead(pages, args.model, args.rounds)
    print("\nRecovery (cold worker: the fault hits the first request; time counted from the fault's event):")
    for fault in ("device_assert", "illegal_address", "worker_kill"):
        recovery(pages, args.model, fault)
    print("\nQueueing (a CPU engine beside a busy models worker):")
    busy_models_worker(pages[:8], args.model, "qwen_vl_2b", 90.0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
