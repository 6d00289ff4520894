"""The one page runner: run these pages of this document with this model, task and options.

Every caller (OCR and Compare pages, the CLI, eval, bench, batch jobs) goes through `run_pages`, so
progress, streaming, stopping and per-page failures behave the same everywhere. Pages are rendered
one at a time, just before they are recognised, and only that page goes to the worker, so memory
does not grow with the page count; a page that cannot be rendered or recognised gets an error of
its own and the other pages still run. A page that comes back without any text gets a warning.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from models.contract import PageResult, ResultKey, RunOptions, TokenCallback
from utils.documents.reader import Document, DocumentError
from utils.engine.loader import Loader, WaitCallback
from utils.engine.pool import ModelUnavailable
from utils.messages import one_line

# (pages done so far, pages in this run, 0-based index of the page about to run)
PageStarted = Callable[[int, int, int], None]


def result_key(document: Document, page: int, model: str, task: str, options: RunOptions | None) -> ResultKey:
    variant = options.output_key(task) if options is not None else None
    return ResultKey(digest=document.digest, page=page, model=model, task=task, variant=variant)


@dataclass(frozen=True)
class PageOutcome:
    """One page of a run: its result, or the one-line reason it has none ("<file>: page N: ...")."""

    key: ResultKey
    result: PageResult | None = None
    error: str | None = None
    wall_seconds: float | None = None  # the recognition call as the caller waited for it, rendering excluded

    @property
    def page(self) -> int:
        return self.key.page


def _has_text(result: PageResult) -> bool:
    return bool(result.text.strip() or result.markdown.strip() or any(b.text.strip() for b in result.blocks))


def run_pages(loader: Loader, document: Document, pages: Sequence[int], model: str, task: str,
              options: RunOptions | None = None, *, on_page: PageStarted | None = None,
              on_token: TokenCallback | None = None, stop: threading.Event | None = None,
              warnings: Sequence[str] = (), on_wait: WaitCallback | None = None) -> Iterator[PageOutcome]:
    """Yield one PageOutcome per page, in order. Stops before the next page once `stop` is set.
    `on_wait(n)` hears how many requests are ahead of a page while it waits for its worker.

    `warnings` apply to every page of this run (e.g. pages of the selection past the end); each
    result's warnings are the document's notes, the page's rendering warnings, these, then the model's.

    ModelUnavailable is raised, not reported per page: no page of this run could succeed.
    """
    options = options or RunOptions()
    for done, index in enumerate(pages):
        if stop is not None and stop.is_set():
            return
        if on_page is not None:
            on_page(done, len(pages), index)
        key = result_key(document, index, model, task, options)
        try:
            page = document.render(index)
        except DocumentError as exc:
            yield PageOutcome(key, error=one_line(exc))
            continue
        page_warnings = page.warnings
        started = time.perf_counter()
        try:
            result = loader.run(model, page.image, task, options, on_token=on_token, page=index,
                                source=document.name, on_wait=on_wait)
        except ModelUnavailable:
            raise
        except Exception as exc:  # this page failed; the next one may well succeed
            yield PageOutcome(key, error=f"{document.name}: page {index + 1}: {one_line(exc)}")
            continue
        finally:
            wall = time.perf_counter() - started
            del page  # do not hold a large page while the caller handles the result
        result.warnings = [*document.notes, *page_warnings, *warnings, *result.warnings]
        if not _has_text(result):  # a blank result must not pass for success without a word
            result.warnings.append(f"no text was found on page {index + 1}")
        yield PageOutcome(key, result=result, wall_seconds=wall)
