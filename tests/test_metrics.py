"""utils.quality.metrics against hand-worked examples and a plain dynamic-programming Levenshtein."""
from __future__ import annotations

import random
import unicodedata

import pytest

from tests.conftest import dp_levenshtein
from utils.quality import metrics, scoring


def test_normalize_folds_whitespace_dashes_quotes_and_ellipsis():
    raw = "  «Парус» — белеет…\n\n\tон\u00a0ищет –  ‘x’ “y” 5\u22123\f"
    assert metrics.normalize(raw) == "\"Парус\" - белеет... он ищет - 'x' \"y\" 5-3"


def test_normalize_composes_unicode_and_drops_invisible_characters():
    decomposed = unicodedata.normalize("NFD", "йод café")
    assert decomposed != "йод café"
    assert metrics.normalize(decomposed) == "йод café"
    assert metrics.normalize("сло\u00adво\u200b\ufeff") == "слово"


def test_normalize_keeps_case_and_other_punctuation():
    assert metrics.normalize("Ivan, (ivan)!") == "Ivan, (ivan)!"
    assert metrics.cer("ivan", "Ivan") == pytest.approx(0.25)


def test_cer_matches_plain_levenshtein_on_random_strings():
    rng = random.Random(7)
    alphabet = "abcабв -.,"
    for _ in range(200):
        ref = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 30)))
        hyp = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
        norm_ref, norm_hyp = metrics.normalize(ref), metrics.normalize(hyp)
        if not norm_ref:
            continue
        assert metrics.cer(hyp, ref) == pytest.approx(dp_levenshtein(norm_hyp, norm_ref) / len(norm_ref))
        assert metrics.char_distance(hyp, ref) == dp_levenshtein(norm_hyp, norm_ref)


def test_cer_ignores_layout_whitespace_and_typographic_variants():
    reference = "Белеет парус одинокий\nВ тумане моря голубом!..."
    hypothesis = "Белеет  парус одинокий В тумане моря голубом!…"
    assert metrics.cer(hypothesis, reference) == 0.0


def test_wer_counts_word_edits_over_reference_words():
    assert metrics.wer("the cat sit on mat", "the cat sat on the mat") == pytest.approx(2 / 6)
    assert metrics.word_errors("the cat sit on mat", "the cat sat on the mat") == (2, 6)
    assert metrics.wer("", "two words") == 1.0


def test_empty_reference_convention():
    assert metrics.cer("", "  \n") == 0.0
    assert metrics.cer("text", "") == 1.0
    assert metrics.wer("", "") == 0.0
    assert metrics.wer("text", "") == 1.0


def test_keyword_recall_is_exact_match_after_normalisation():
    output = "Счёт №  4521 от «12 марта»\nИтого: 1 250 руб."
    hits = metrics.keyword_hits(output, ["4521", '"12 марта"', "итого", "1 250", "  ", "EUR"])
    assert hits == [("4521", True), ('"12 марта"', True), ("итого", False), ("1 250", True), ("EUR", False)]
    assert metrics.keyword_recall(output, ["4521", "EUR"]) == 0.5
    assert metrics.keyword_recall(output, []) is None
    assert metrics.keyword_recall(output, ["", " "]) is None


def test_agreement_is_one_minus_normalised_distance():
    assert metrics.agreement("same text", "same  text\n") == 1.0
    assert metrics.agreement("", "") == 1.0
    assert metrics.agreement("abcd", "abxd") == pytest.approx(0.75)
    assert metrics.agreement("abcd", "ab") == pytest.approx(metrics.agreement("ab", "abcd")) == pytest.approx(0.5)
    assert metrics.agreement("aaaa", "bbbb") == 0.0


def test_bag_of_words_ignores_order_and_edge_punctuation():
    reference = "Total: 12.50 RM\nCash 20.00"
    shuffled = "Cash 20.00 Total 12.50 RM"
    assert metrics.cer(shuffled, reference) > 0.3
    bag = metrics.bag_scores(shuffled, reference)
    assert (bag.precision, bag.recall, bag.f1) == (1.0, 1.0, 1.0)
    assert metrics.bag_of_words("«Привет», — мир!") == {"Привет": 1, "мир": 1}


def test_bag_of_words_counts_repeated_words_as_a_multiset():
    bag = metrics.bag_scores("the the cat", "the cat sat on the mat")
    assert (bag.matched, bag.hypothesis_words, bag.reference_words) == (3, 3, 6)
    assert bag.precision == 1.0
    assert bag.recall == 0.5
    assert bag.f1 == pytest.approx(2 / 3)
    empty = metrics.bag_scores("", "words here")
    assert (empty.precision, empty.recall, empty.f1) == (0.0, 0.0, 0.0)


def test_score_bundles_every_metric():
    scores = metrics.score("Hello wrld", "Hello world", ["Hello", "world"])
    assert scores.cer == pytest.approx(1 / 11)
    assert scores.wer == pytest.approx(0.5)
    assert scores.keyword_recall == 0.5
    assert (scores.char_errors, scores.reference_chars) == (1, 11)
    assert scores.bow_f1 == pytest.approx(0.5)


def test_word_diff_runs_rebuild_both_sides():
    a, b = "one two three four five", "one 2 three four five six"
    runs = metrics.word_diff(a, b)
    assert runs == [("equal", "one"), ("delete", "two"), ("insert", "2"), ("equal", "three four five"),
                    ("insert", "six")]
    side_a = " ".join(words for op, words in runs if op != "insert")
    side_b = " ".join(words for op, words in runs if op != "delete")
    assert (side_a, side_b) == (a, b)
    assert metrics.word_diff("", "") == []


FOUR_PAGES = ["First page text here", "Second page of the letter", "Third page, a table", "Fourth and last page"]


def test_pages_run_are_scored_against_their_own_parts_of_the_reference():
    reference = "\f".join(FOUR_PAGES)
    texts = {0: "First page text here", 1: "Second page of the leter"}  # pages 1-2 of a 4-page PDF
    score = scoring.score_document(texts, reference, page_count=4)
    assert [s.pages for s in score.segments] == [(0,), (1,)]
    chars = len(FOUR_PAGES[0]) + len(FOUR_PAGES[1])
    assert (score.char_errors, score.reference_chars) == (1, chars)
    assert score.cer == pytest.approx(1 / chars)
    assert score.page(1).cer == pytest.approx(1 / len(FOUR_PAGES[1])) and score.page(2) is None
    assert score.notes == ()
    # Against the whole reference, the missing pages 3-4 would count as errors: the old, wrong figure.
    assert metrics.cer("\n".join(texts.values()), reference) > 0.4


def test_summed_distance_over_summed_length_not_a_mean_of_pages():
    reference = "a\fbbbbbbbbbb"
    score = scoring.score_document({0: "x", 1: "bbbbbbbbbb"}, reference, page_count=2)
    assert score.cer == pytest.approx(1 / 11)  # the mean of the pages' CERs would be 0.5
    assert (score.page(0).cer, score.page(1).cer) == (1.0, 0.0)
    words = scoring.score_document({0: "one two", 1: "three four five"}, "one too\fthree four five", 2)
    assert words.wer == pytest.approx(1 / 5)


@pytest.mark.parametrize("reference,pages,page_count,segments,note", [
    ("whole text", [0, 1], 2, [((0, 1), "whole text")], "pages 1, 2 joined"),
    ("whole text", [2], 5, [((2,), "whole text")], None),
    ("p1\fp2\fp3\f", [0, 2], 3, [((0,), "p1"), ((2,), "p3")], None),  # trailing form feed: no extra part
    ("s2\fs4", [1, 3], 6, [((1,), "s2"), ((3,), "s4")], None),  # one part per selected page
    ("p1\fp2", [0, 1, 2], 5, [((0,), "p1"), ((1,), "p2")], "page(s) 3 not scored"),
])
def test_reference_segments(reference, pages, page_count, segments, note):
    found, notes = scoring.reference_segments(reference, pages, page_count)
    assert [(s.pages, s.reference) for s in found] == segments
    if note is None:
        assert notes == []
    else:
        assert len(notes) == 1 and note in notes[0]


def test_document_keywords_and_bag_of_words_cover_every_scored_page():
    score = scoring.score_document({0: "Invoice 4521", 1: "Total due"}, "Invoice 4521\fTotal due", 2,
                                   keywords=["4521", "due", "Zebra"])
    assert score.keyword_recall == pytest.approx(2 / 3) and score.keywords_missed == ("Zebra",)
    assert (score.bow_precision, score.bow_recall, score.cer) == (1.0, 1.0, 0.0)
