"""Compare page: several models on the same page(s), side by side, with a word diff and, given a
reference text, CER / WER / keyword recall and accuracy against time. UI only: pages run through
utils.engine.runner.run_pages and are scored by utils.quality.scoring, as in `cli.py eval`."""
from __future__ import annotations

import html

import pandas as pd
import streamlit as st

from models.contract import PageResult, ResultKey, RunOptions
from pages.ui.common import (
    TASK_LABELS,
    UPLOAD_TYPES,
    TokenView,
    draw_boxes,
    get_loader,
    model_catalog,
    model_label,
    open_upload,
    page_image,
    require_app_shell,
)
from pages.ui.stored import keep
from utils.documents.reader import Document, DocumentError
from utils.engine.loader import ModelUnavailable
from utils.engine.runner import PageOutcome, result_key, run_pages
from utils.messages import one_line
from utils.quality import metrics, scoring

REFERENCE = "Reference text"
DIFF_STYLE = {
    "delete": "background:#ffd7d5;color:#82071e;text-decoration:line-through",
    "insert": "background:#ccffd8;color:#055d20;text-decoration:none",
}


def _store() -> dict[ResultKey, PageOutcome]:
    # Every (page, model) run in this session, by ResultKey: a result or the page's own error.
    return st.session_state.setdefault("compare_results", {})


def _run_jobs(document: Document, jobs: dict[str, list[int]], task: str, options: RunOptions) -> None:
    """Run each model on its pages, one after another, with live progress and streamed tokens."""
    loader = get_loader()
    store = _store()
    total = sum(len(pages) for pages in jobs.values())
    counts = {"done": 0, "failed": 0}
    with st.status(f"Running {total} job(s)…", expanded=True) as status:
        bar = st.progress(0.0)
        view = TokenView(st.empty(), tail=2000)
        for model, pages in jobs.items():
            def started(done: int, _total: int, index: int, model: str = model) -> None:
                view.reset()
                bar.progress(counts["done"] / total,
                             text=f"{model} · page {index + 1} ({counts['done'] + 1} of {total})")

            try:
                for outcome in run_pages(loader, document, pages, model, task, options, on_page=started,
                                         on_token=view):
                    keep(outcome, document, options)  # in the results store before it is shown
                    store[outcome.key] = outcome
                    counts["done"] += 1
                    view.placeholder.empty()
                    if outcome.result is None:
                        counts["failed"] += 1
                        st.write(f"✗ {model} · {outcome.error}")
                    else:
                        st.write(f"✓ {model} · page {outcome.page + 1}: {outcome.result.seconds:.2f} s")
            except ModelUnavailable as exc:  # shown for that model; the other models still run
                for index in pages:
                    key = result_key(document, index, model, task, options)
                    store[key] = PageOutcome(key, error=one_line(exc))
                counts["done"] += len(pages)
                counts["failed"] += len(pages)
                st.write(f"✗ {model}: {one_line(exc)}")
        bar.progress(1.0, text="done")
        failed = counts["failed"]
        status.update(label=f"Ran {total} job(s)" + (f", {failed} failed" if failed else ""),
                      state="error" if failed else "complete", expanded=False)


def _request_rerun(model: str) -> None:
    st.session_state["compare_rerun"] = model


def _reference_inputs() -> tuple[str, list[str]]:
    """The reference (a pasted text, or an uploaded .txt which wins) and the keywords."""
    left, right = st.columns([3, 1])
    pasted = left.text_area(REFERENCE + " (optional)", key="compare_reference", height=120,
                            help="The correct text of the page(s), to score each model against; "
                                 "for several pages, separate them with a form feed or upload a .txt")
    upload = right.file_uploader("…or a .txt file", type=["txt"], key="compare_reference_file")
    keywords = right.text_area("Keywords, one per line", key="compare_keywords", height=68)
    keyword_list = [line for line in keywords.splitlines() if line.strip()]
    if upload is not None:
        text = upload.getvalue().decode("utf-8-sig", errors="replace")
        st.caption(f"Reference from {upload.name} ({len(text):,} characters)")
        return text, keyword_list
    return pasted, keyword_list


def _reference_for_page(reference: str, indices: list[int], index: int, page_count: int) -> str | None:
    """The part of the reference that this page is scored against (None: no part for it)."""
    segments, _ = scoring.reference_segments(reference, indices, page_count)
    return next((segment.reference for segment in segments if index in segment.pages), None)


def _timing_line(result) -> str:
    parts = [f"load {result.load_seconds:.2f} s" if result.load_seconds is not None else "already loaded",
             f"inference {result.seconds:.2f} s"]
    if result.tokens_per_second is not None:
        parts.append(f"{result.tokens_per_second:.1f} tok/s")
    return " · ".join(parts)


def _show_column(document: Document, index: int, model: str, label: str, entry: PageOutcome | None) -> None:
    st.subheader(label)
    if entry is None:
        st.caption("Not run yet on this page.")
    elif entry.result is None:
        st.error(entry.error)
    else:
        result = entry.result
        st.caption(f"{result.device}" + (f" · {result.dtype}" if result.dtype else "") + f" · profile {result.profile}")
        st.markdown(_timing_line(result))
        if result.truncated:
            st.warning("Output truncated: the model hit its token limit or a repetition stop.")
        for warning in result.warnings:
            st.warning(warning)
        text_tab, md_tab, boxes_tab = st.tabs(["Text", "Markdown", f"Boxes ({len(result.blocks)})"])
        with text_tab:
            st.code(result.text or "(no text)", language=None, wrap_lines=True)
        with md_tab:
            st.markdown(result.markdown or result.text or "(no text)")
        with boxes_tab:
            image = page_image(document, index)
            if image is not None:
                st.image(draw_boxes(image, result.blocks), width="stretch")
    st.button("↻ Rerun", key=f"compare_rerun_{model}", on_click=_request_rerun, args=(model,),
              help=f"Run {label} again on the selected page(s); the other models keep their results")


def diff_html(a: str, b: str) -> str:
    """Word diff of a -> b: removed words red and struck through, added words green; text escaped."""
    spans = []
    for op, words in metrics.word_diff(a, b):
        escaped = html.escape(words)
        if op == "equal":
            spans.append(f"<span>{escaped}</span>")
        else:
            tag = "del" if op == "delete" else "ins"
            spans.append(f'<{tag} style="{DIFF_STYLE[op]}">{escaped}</{tag}>')
    body = " ".join(spans) or "<em>(both empty)</em>"
    return f'<div class="compare-diff" style="line-height:1.7;white-space:normal">{body}</div>'


def _show_diff(texts: dict[str, str], labels: dict[str, str]) -> None:
    st.subheader("Differences")
    names = list(texts)
    if len(names) < 2:
        st.caption("Two outputs are needed for a diff.")
        return
    left, right = st.columns(2)
    a = left.selectbox("From", names, index=0, format_func=lambda n: labels.get(n, n), key="compare_diff_a")
    b = right.selectbox("To", names, index=1, format_func=lambda n: labels.get(n, n), key="compare_diff_b")
    agreement = metrics.agreement(texts[a], texts[b])
    st.caption(f"Agreement {agreement:.1%} (1 − normalised character edit distance). Words after normalisation; "
               f"red struck: only in “{labels.get(a, a)}”, green: only in “{labels.get(b, b)}”.")
    st.html(diff_html(texts[a], texts[b]))


def _show_scores(scores: dict[str, scoring.DocumentScore], seconds: dict[str, float], labels: dict[str, str],
                 keywords: list[str]) -> None:
    st.subheader("Accuracy against the reference")
    rows = []
    for model, score in scores.items():
        rows.append({"Model": labels[model], "CER %": round(score.cer * 100, 2), "WER %": round(score.wer * 100, 2),
                     "Keyword recall %": None if score.keyword_recall is None else round(score.keyword_recall * 100, 1),
                     "Bag-of-words F1 %": round(score.bow_f1 * 100, 1), "Seconds": round(seconds[model], 3)})
    table = pd.DataFrame(rows)
    if not keywords:
        table = table.drop(columns=["Keyword recall %"])
    st.table(table.set_index("Model"))
    for model, score in scores.items():
        if score.keywords_missed:
            st.caption(f"{labels[model]} missed: {', '.join(score.keywords_missed)}")
    st.caption("Text is normalised first (Unicode NFC, dashes/quotes/ellipsis unified, whitespace folded; case kept). "
               "CER and WER are the summed edit distance over the summed reference length, as in `cli.py eval`. "
               "Bag-of-words F1 ignores reading order.")
    st.scatter_chart(table, x="Seconds", y="CER %", color="Model", x_label="inference seconds",
                     y_label="CER % (lower is better)", height=260)


def _choose(catalog: dict) -> tuple[list[str], str | None, str | None]:
    available = [name for name, status in catalog.items() if status.availability.available]
    unavailable = [status for status in catalog.values() if not status.availability.available]
    left, right = st.columns([3, 1])
    models = left.multiselect("Models (two or more)", available, default=available[:2], key="compare_models",
                              format_func=lambda n: model_label(catalog[n]))
    if unavailable:
        left.caption("Not available here: " + "; ".join(f"{s.label} ({s.availability.status})" for s in unavailable))
    shared = [t for t in TASK_LABELS if models and all(t in catalog[m].tasks for m in models)]
    if models and not shared:
        right.error("These models share no task.")
        return models, None, None
    task = right.selectbox("Task", shared or ["text"], format_func=lambda t: TASK_LABELS.get(t, t),
                           key="compare_task")
    prompt = st.text_area("Prompt", "Describe this document.", key="compare_prompt") if task == "prompt" else None
    return models, task, prompt


def main() -> None:
    require_app_shell("pages/compare.py")
    st.title("Compare models")
    rerun = st.session_state.pop("compare_rerun", None)
    catalog = {status.name: status for status in model_catalog()}
    upload = st.file_uploader("A scan or PDF", type=UPLOAD_TYPES, key="compare_upload",
                              help="PNG, JPEG, TIFF, WebP, BMP, GIF or PDF")
    models, task, prompt = _choose(catalog)
    if upload is None:
        st.caption("Upload a document, pick two or more models and run them on the same page.")
        return
    document = open_upload(upload)
    if document is None or task is None:
        return
    selection = "1"
    if document.page_count > 1:
        selection = st.text_input(f"Pages (of {document.page_count})", "1", key="compare_pages",
                                  help='Like "1-3,7"; empty = all pages')
    try:
        indices = document.select(selection).indices
    except DocumentError as exc:
        st.error(str(exc))
        return
    reference, keywords = _reference_inputs()
    options = RunOptions(prompt=prompt)

    def key(index: int, model: str) -> ResultKey:
        return result_key(document, index, model, task, options)

    store = _store()
    if st.button(f"Run {len(models)} models", type="primary", disabled=len(models) < 2, key="compare_run"):
        jobs = {m: missing for m in models if (missing := [i for i in indices if key(i, m) not in store])}
        if jobs:
            _run_jobs(document, jobs, task, options)
        else:
            st.info("Every chosen model already has a result for these pages; use ↻ Rerun on one to run it again.")
    if rerun in models:
        _run_jobs(document, {rerun: indices}, task, options)
    if len(models) < 2:
        st.info("Pick at least two models to compare.")
    if not models:
        return

    labels = {m: catalog[m].label for m in models}
    index = indices[0]
    if len(indices) > 1:
        index = st.selectbox("Show page", indices, format_func=lambda i: f"Page {i + 1}", key="compare_view_page")
    columns = st.columns(len(models))
    for column, model in zip(columns, models):
        with column:
            _show_column(document, index, model, labels[model], store.get(key(index, model)))

    results: dict[str, dict[int, PageResult]] = {}
    for model in models:
        done = {i: entry.result for i in indices if (entry := store.get(key(i, model))) and entry.result}
        if done:
            results[model] = done
    diff_sources = {m: pages[index].text for m, pages in results.items() if index in pages}
    diff_labels = dict(labels)
    page_reference = _reference_for_page(reference, indices, index, document.page_count) \
        if reference.strip() else None
    if page_reference is not None:
        diff_sources[REFERENCE] = page_reference
        diff_labels[REFERENCE] = REFERENCE
    _show_diff(diff_sources, diff_labels)

    if reference.strip():
        complete = {m: pages for m, pages in results.items() if len(pages) == len(indices)}
        if complete:
            scores = {m: scoring.score_document({i: scoring.scored_text(pages[i]) for i in indices}, reference,
                                                document.page_count, keywords) for m, pages in complete.items()}
            seconds = {m: sum(r.seconds for r in pages.values()) for m, pages in complete.items()}
            _show_scores(scores, seconds, labels, keywords)
            score = next(iter(scores.values()))
            for note in score.notes:
                st.caption(note[:1].upper() + note[1:] + ".")
            if len(score.segments) > 1:
                pages = ", ".join(str(s.pages[0] + 1) for s in score.segments)
                st.caption(f"Pages {pages} each scored against their own part of the reference (split by form feeds).")
        else:
            st.caption("Run the models to score them against the reference.")


main()
