"""Text accuracy metrics: CER, WER, keyword recall, agreement, order-insensitive bag of words.

Every metric compares *normalised* text. `normalize(text)` does, in this order:

1. Unicode NFC (composed accents: "й" typed as "и" + combining breve equals "й").
2. Invisible characters removed: soft hyphen U+00AD, zero-width space/non-joiner/joiner
   U+200B-U+200D, byte-order mark U+FEFF.
3. Dashes to "-": hyphen U+2010, non-breaking hyphen U+2011, figure dash U+2012, en dash U+2013,
   em dash U+2014, horizontal bar U+2015, minus sign U+2212, small/fullwidth hyphen-minus
   U+FE58, U+FE63, U+FF0D.
4. Quotes to ASCII: single quotes and primes ‘ ’ ‚ ‛ ′ to ', double quotes “ ” „ ‟ « » ″ to ".
5. Ellipsis "…" (U+2026) to "...".
6. Whitespace folded: every run of Unicode whitespace (spaces, tabs, line breaks, form feeds,
   no-break spaces) becomes one space; leading and trailing whitespace is removed.

Case and all other punctuation are kept: "Ivan" and "ivan" differ by one character.

Definitions (ref = normalised reference, hyp = normalised hypothesis):
- CER = Levenshtein distance between the character strings / len(ref) (rapidfuzz).
- WER = Levenshtein distance between the space-separated word lists / number of ref words (jiwer).
  An empty reference gives 0.0 when the hypothesis is empty too, else 1.0 (for CER and WER).
- keyword recall = share of keywords whose normalised form occurs as an exact substring of hyp;
  None when there are no keywords.
- agreement(a, b) = 1 - Levenshtein(a, b) / max(len(a), len(b)); 1.0 for two empty texts.
- bag of words: words are the space-separated tokens of the normalised text with punctuation
  stripped from both ends (tokens that are only punctuation are dropped); they are compared as
  multisets, ignoring order. precision = matched / hyp words, recall = matched / ref words,
  F1 = their harmonic mean. Used beside CER where the reference's reading order is unreliable.
"""
from __future__ import annotations

import difflib
import unicodedata
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

import jiwer
from rapidfuzz.distance import Levenshtein

_REMOVED = "\u00ad\u200b\u200c\u200d\ufeff"
_DASHES = "\u2010\u2011\u2012\u2013\u2014\u2015\u2212\ufe58\ufe63\uff0d"
_SINGLE_QUOTES = "\u2018\u2019\u201a\u201b\u2032"
_DOUBLE_QUOTES = "\u201c\u201d\u201e\u201f\u00ab\u00bb\u2033"

_TABLE: dict[int, str | None] = {ord(ch): None for ch in _REMOVED}
_TABLE.update({ord(ch): "-" for ch in _DASHES})
_TABLE.update({ord(ch): "'" for ch in _SINGLE_QUOTES})
_TABLE.update({ord(ch): '"' for ch in _DOUBLE_QUOTES})
_TABLE[0x2026] = "..."


def normalize(text: str) -> str:
    """The normalisation every metric here applies first (see the module docstring)."""
    text = unicodedata.normalize("NFC", text or "").translate(_TABLE)
    return " ".join(text.split())


def _empty_reference_rate(hypothesis: str) -> float:
    return 0.0 if not hypothesis else 1.0


def char_distance(hypothesis: str, reference: str) -> int:
    """Levenshtein distance between the normalised texts, in characters."""
    return Levenshtein.distance(normalize(hypothesis), normalize(reference))


def cer(hypothesis: str, reference: str) -> float:
    hyp, ref = normalize(hypothesis), normalize(reference)
    if not ref:
        return _empty_reference_rate(hyp)
    return Levenshtein.distance(hyp, ref) / len(ref)


def wer(hypothesis: str, reference: str) -> float:
    hyp, ref = normalize(hypothesis), normalize(reference)
    if not ref:
        return _empty_reference_rate(hyp)
    return float(jiwer.wer(ref, hyp))


def word_errors(hypothesis: str, reference: str) -> tuple[int, int]:
    """(word edit distance, reference word count) on normalised text, for corpus-level WER."""
    hyp, ref = normalize(hypothesis).split(), normalize(reference).split()
    return Levenshtein.distance(hyp, ref), len(ref)


def keyword_hits(hypothesis: str, keywords: Iterable[str]) -> list[tuple[str, bool]]:
    """Each non-blank keyword with whether it occurs exactly in the normalised hypothesis."""
    hyp = normalize(hypothesis)
    hits = []
    for keyword in keywords:
        wanted = normalize(keyword)
        if wanted:
            hits.append((keyword.strip(), wanted in hyp))
    return hits


def keyword_recall(hypothesis: str, keywords: Iterable[str]) -> float | None:
    hits = keyword_hits(hypothesis, keywords)
    if not hits:
        return None
    return sum(found for _, found in hits) / len(hits)


def agreement(a: str, b: str) -> float:
    """1 - normalised character edit distance between two outputs (1.0 = identical)."""
    return float(Levenshtein.normalized_similarity(normalize(a), normalize(b)))


def _strip_punctuation(token: str) -> str:
    start, end = 0, len(token)
    while start < end and unicodedata.category(token[start]).startswith("P"):
        start += 1
    while end > start and unicodedata.category(token[end - 1]).startswith("P"):
        end -= 1
    return token[start:end]


def bag_of_words(text: str) -> Counter:
    words = (_strip_punctuation(token) for token in normalize(text).split())
    return Counter(word for word in words if word)


@dataclass(frozen=True)
class BagScores:
    precision: float
    recall: float
    f1: float
    matched: int
    hypothesis_words: int
    reference_words: int


def bag_scores_from_counts(hypothesis: Counter, reference: Counter) -> BagScores:
    matched = sum((hypothesis & reference).values())
    n_hyp, n_ref = sum(hypothesis.values()), sum(reference.values())
    precision = matched / n_hyp if n_hyp else (1.0 if not n_ref else 0.0)
    recall = matched / n_ref if n_ref else (1.0 if not n_hyp else 0.0)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return BagScores(precision, recall, f1, matched, n_hyp, n_ref)


def bag_scores(hypothesis: str, reference: str) -> BagScores:
    """Order-insensitive word precision / recall / F1."""
    return bag_scores_from_counts(bag_of_words(hypothesis), bag_of_words(reference))


@dataclass(frozen=True)
class TextScores:
    cer: float
    wer: float
    bow_precision: float
    bow_recall: float
    bow_f1: float
    keyword_recall: float | None
    char_errors: int
    reference_chars: int


def score(hypothesis: str, reference: str, keywords: Iterable[str] = ()) -> TextScores:
    """All reference-based metrics for one hypothesis."""
    bag = bag_scores(hypothesis, reference)
    return TextScores(
        cer=cer(hypothesis, reference),
        wer=wer(hypothesis, reference),
        bow_precision=bag.precision,
        bow_recall=bag.recall,
        bow_f1=bag.f1,
        keyword_recall=keyword_recall(hypothesis, keywords),
        char_errors=char_distance(hypothesis, reference),
        reference_chars=len(normalize(reference)),
    )


def word_diff(a: str, b: str) -> list[tuple[str, str]]:
    """Word-level diff of normalised a -> b as (op, words) runs; op is 'equal', 'delete' or 'insert'.

    A replaced run is reported as a delete followed by an insert.
    """
    words_a, words_b = normalize(a).split(), normalize(b).split()
    runs: list[tuple[str, str]] = []
    matcher = difflib.SequenceMatcher(a=words_a, b=words_b, autojunk=False)
    for op, a1, a2, b1, b2 in matcher.get_opcodes():
        if op in ("equal", "delete", "replace") and a2 > a1:
            runs.append(("equal" if op == "equal" else "delete", " ".join(words_a[a1:a2])))
        if op in ("insert", "replace") and b2 > b1:
            runs.append(("insert", " ".join(words_b[b1:b2])))
    return runs
