"""The one page runner: run these pages of this document with this model, task and options.

Every caller (OCR and Compare pages, the CLI, eval, bench, batch jobs) goes through `run_pages`, so
progress, streaming, stopping and per-page failures behave the same everywhere. Pages are rendered
one at a time, just before they are recognised, so memory does not grow with the page count; a page
that cannot be rendered or recognised gets an error of its own and the other pages still run.
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from models.contract import PageResult, ResultKey, RunOptions, TokenCallback
from utils.documents.reader import Document, DocumentError
from utils.engine.loader import Loader
from utils.engine.pool import ModelUnavailable
from utils.messages import one_line

# (pages done so far, pages in this run, 0-based index of the page about to run)
PageStarted = Callable[[int, int, int], None]


def result_key(document: Document, page: int, model: str, task: str, options: RunOptions | None) -> ResultKey:
    variant = options.output_key(task) if options is not None else None
    return ResultKey(digest=document.digest, page=page, model=model, task=task, variant=variant)


@dataclass(frozen=True)
class PageOutcome:
    """One page of a run: its result, or the one-line reason it has none."""

    key: ResultKey
    result: PageResult | None = None
    error: str | None = None

    @property
    def page(self) -> int:
        return self.key.page


def run_pages(loader: Loader, document: Document, pages: Sequence[int], model: str, task: str,
              options: RunOptions | None = None, *, on_page: PageStarted | None = None,
              on_token: TokenCallback | None = None, stop: threading.Event | None = None) -> Iterator[PageOutcome]:
    """Yield one PageOutcome per page, in order. Stops before the next page once `stop` is set.

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
            image = document.render(index)
        except DocumentError as exc:
            yield PageOutcome(key, error=one_line(exc))
            continue
        try:
            result = loader.run(model, image, task, options, on_token=on_token, page=index, source=document.name)
        except ModelUnavailable:
            raise
        except Exception as exc:  # this page failed; the next one may well succeed
            yield PageOutcome(key, error=f"page {index + 1}: {one_line(exc)}")
            continue
        finally:
            del image  # do not hold a large page while the caller handles the result
        result.warnings = document.warnings + result.warnings
        yield PageOutcome(key, result=result)
