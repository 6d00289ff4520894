"""The one document scorer, shared by the Compare page and `cli.py eval`.

A reference text covers a document; a form feed (\\f) separates its pages. `reference_segments`
decides which part of the reference each page that was run is compared with:

- no form feed: the pages run, joined in run order, against the whole reference;
- one part per page of the document: each page run against its own part (pages not run are not
  scored, so pages 1-2 of a 4-page PDF are scored against parts 1-2, not against all four);
- one part per page run (a reference for just the selected pages): the parts in run order;
- any other count: part k belongs to page k; pages without a part are not scored (a note says so).

A trailing form feed (as pdftotext writes after every page) does not make an extra part.

`score_document` then sums over those segments: CER = summed character edit distance over the
summed reference length, WER likewise in words (all on normalised text, utils.quality.metrics);
bag-of-words counts are summed; keywords are looked for in the text of every scored page.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from models.contract import PageResult
from utils.quality import metrics


@dataclass(frozen=True)
class Segment:
    """These pages' text (joined in this order) is compared with this reference."""

    pages: tuple[int, ...]  # 0-based
    reference: str


@dataclass(frozen=True)
class SegmentScore:
    pages: tuple[int, ...]
    cer: float
    wer: float
    char_errors: int
    reference_chars: int
    word_errors: int
    reference_words: int


@dataclass(frozen=True)
class DocumentScore:
    cer: float
    wer: float
    bow_precision: float
    bow_recall: float
    bow_f1: float
    keyword_recall: float | None
    keywords_missed: tuple[str, ...]
    char_errors: int
    reference_chars: int
    segments: tuple[SegmentScore, ...]
    notes: tuple[str, ...]

    def page(self, index: int) -> SegmentScore | None:
        """The score of this page on its own, when it was compared with a part of its own."""
        return next((s for s in self.segments if s.pages == (index,)), None)


def reference_parts(reference: str) -> list[str]:
    parts = reference.split("\f")
    if len(parts) > 1 and not parts[-1].strip():
        parts.pop()
    return parts


def _page_list(pages: Iterable[int]) -> str:
    return ", ".join(str(p + 1) for p in pages)


def reference_segments(reference: str, pages: Sequence[int], page_count: int) -> tuple[list[Segment], list[str]]:
    """(segments to score, notes on how the reference was matched to the pages); see the module docstring."""
    parts = reference_parts(reference)
    if len(parts) == 1:
        notes = []
        if len(pages) > 1:
            notes.append(f"pages {_page_list(pages)} joined and scored against the whole reference "
                         "(it has no form feeds)")
        return [Segment(tuple(pages), parts[0])], notes
    if len(parts) == page_count:
        by_page = dict(enumerate(parts))
    elif len(parts) == len(pages):
        by_page = dict(zip(pages, parts))
    else:
        by_page = dict(enumerate(parts))
    segments = [Segment((page,), by_page[page]) for page in pages if page in by_page]
    unscored = [page for page in pages if page not in by_page]
    notes = []
    if unscored:
        notes.append(f"the reference has {len(parts)} page(s) for a document of {page_count}; "
                     f"page(s) {_page_list(unscored)} not scored")
    return segments, notes


def _rate(errors: int, total: int) -> float:
    return errors / total if total else (0.0 if errors == 0 else 1.0)


def score_segment(text: str, segment: Segment) -> SegmentScore:
    char_errors = metrics.char_distance(text, segment.reference)
    reference_chars = len(metrics.normalize(segment.reference))
    word_errors, reference_words = metrics.word_errors(text, segment.reference)
    return SegmentScore(segment.pages, _rate(char_errors, reference_chars), _rate(word_errors, reference_words),
                        char_errors, reference_chars, word_errors, reference_words)


def score_document(texts: Mapping[int, str], reference: str, page_count: int,
                   keywords: Iterable[str] = ()) -> DocumentScore:
    """Score the pages that were run ({0-based page: text}, in run order) against the reference."""
    segments, notes = reference_segments(reference, list(texts), page_count)
    hypotheses = ["\n".join(texts[page] for page in segment.pages) for segment in segments]
    scores = tuple(score_segment(text, segment) for text, segment in zip(hypotheses, segments))
    char_errors = sum(s.char_errors for s in scores)
    reference_chars = sum(s.reference_chars for s in scores)
    word_errors = sum(s.word_errors for s in scores)
    reference_words = sum(s.reference_words for s in scores)
    bag = metrics.bag_scores_from_counts(sum((metrics.bag_of_words(t) for t in hypotheses), Counter()),
                                         sum((metrics.bag_of_words(s.reference) for s in segments), Counter()))
    hits = metrics.keyword_hits("\n".join(hypotheses), keywords)
    return DocumentScore(
        cer=_rate(char_errors, reference_chars), wer=_rate(word_errors, reference_words),
        bow_precision=bag.precision, bow_recall=bag.recall, bow_f1=bag.f1,
        keyword_recall=sum(found for _, found in hits) / len(hits) if hits else None,
        keywords_missed=tuple(keyword for keyword, found in hits if not found),
        char_errors=char_errors, reference_chars=reference_chars, segments=scores, notes=tuple(notes))


def scored_text(result: PageResult) -> str:
    """The text a result is scored on: its plain text, else its markdown."""
    return result.text or result.markdown
