"""Compare page: several models on the same page(s), side by side, with a word diff and, given a
reference text, CER / WER / keyword recall and accuracy against time. UI only: pages run through
utils.engine.runner.run_pages and are scored by utils.quality.scoring, as in `cli.py eval`."""
from __future__ import annotations

import html

import streamlit as st

from models.contract import PageResult, ResultKey, RunOptions
from pages.ui.common import (
    TASK_LABELS,
    display_page,
    get_loader,
    model_catalog,
    model_label,
    page_view,
    require_app_shell,
)
from pages.ui.run import Entry, RunJob
from pages.ui.session import document_picker, store_or_none, workspace_with_uploads
from pages.ui.shell import follow_later
from pages.ui.workspace import Workspace, get_workspace, kept
from utils.documents.reader import Document, DocumentError
from utils.engine.runner import result_key
from utils.quality import metrics, scoring

REFERENCE = "Reference text"
DEFAULT_PROMPT = "Describe this document."
DIFF_STYLE = {
    "delete": "background:#ffd7d5;color:#82071e;text-decoration:line-through",
    "insert": "background:#ccffd8;color:#055d20;text-decoration:none",
}
# Figures as people read them: percentages with two decimals (one for the coarser ones), never 1.4500.
TABLE_FORMATS = {"CER %": "{:.2f}", "WER %": "{:.2f}", "Keyword recall %": "{:.1f}", "Bag-of-words F1 %": "{:.1f}",
                 "Seconds": "{:.2f}"}


def _options() -> RunOptions:
    task = st.session_state.get("compare_task")
    return RunOptions(prompt=st.session_state.get("compare_prompt", DEFAULT_PROMPT) if task == "prompt" else None)


def _start(workspace: Workspace, only: str | None = None) -> None:
    """Run's (or a model's ↻ Rerun) callback, before the page is drawn: the page shows the run at once.
    Run skips what is done already; ↻ Rerun runs that model again on every selected page."""
    document = workspace.document
    if document is None or workspace.running("compare") is not None:
        return
    models = [only] if only else list(st.session_state.get("compare_models", []))
    task = st.session_state.get("compare_task") or "text"
    options = _options()
    try:
        indices = document.select(st.session_state.get("compare_pages", "1") if document.page_count > 1
                                  else "1").indices
    except DocumentError:
        return
    if only:
        plan = [(only, indices)]
    else:
        plan = [(m, missing) for m in models
                if (missing := [i for i in indices if result_key(document, i, m, task, options)
                                not in workspace.entries])]
    if not plan:
        st.session_state["compare_flash"] = ("Every chosen model already has a result for these pages; "
                                             "use ↻ Rerun on one to run it again.")
        return
    labels = {status.name: status.label for status in model_catalog()}
    store = store_or_none(workspace)
    workspace.jobs.append(RunJob(get_loader(), store, document, plan, task, options, kind="compare", labels=labels))


def _reference_inputs() -> tuple[str, list[str]]:
    """The reference (a pasted text, or an uploaded .txt which wins) and the keywords; the pasted text
    and the keywords are kept in the workspace."""
    left, right = st.columns([3, 1])
    pasted = left.text_area(REFERENCE + " (optional)", height=120, key=kept("compare_reference", "", _is_text),
                            help="The correct text of the page(s), to score each model against; "
                                 "for several pages, separate them with a form feed or upload a .txt")
    upload = right.file_uploader("…or a .txt file", type=["txt"], key="compare_reference_file")
    keywords = right.text_area("Keywords, one per line", height=68, key=kept("compare_keywords", "", _is_text))
    keyword_list = [line for line in keywords.splitlines() if line.strip()]
    if upload is not None:
        text = upload.getvalue().decode("utf-8-sig", errors="replace")
        st.caption(f"Reference from {upload.name} ({len(text):,} characters)")
        return text, keyword_list
    return pasted, keyword_list


def _is_text(value) -> bool:
    return isinstance(value, str)


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


def _show_column(workspace: Workspace, document: Document, index: int, model: str, label: str,
                 entry: Entry | None, running: bool) -> None:
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
            view = page_view(document, index)
            if view is not None:
                st.image(display_page(view, result.blocks), width="stretch")
    st.button("↻ Rerun", key=f"compare_rerun_{model}", on_click=_start, args=(workspace, model), disabled=running,
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
    import pandas as pd  # only here: the Compare page's other parts do without it

    st.subheader("Accuracy against the reference")
    rows = []
    for model, score in scores.items():
        rows.append({"Model": labels[model], "CER %": round(score.cer * 100, 2), "WER %": round(score.wer * 100, 2),
                     "Keyword recall %": None if score.keyword_recall is None else round(score.keyword_recall * 100, 1),
                     "Bag-of-words F1 %": round(score.bow_f1 * 100, 1), "Seconds": round(seconds[model], 3)})
    table = pd.DataFrame(rows)
    if not keywords:
        table = table.drop(columns=["Keyword recall %"])
    shown = table.set_index("Model")
    st.table(shown.style.format({c: f for c, f in TABLE_FORMATS.items() if c in shown.columns}, na_rep="—"))
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
    models = left.multiselect("Models (two or more)", available, format_func=lambda n: model_label(catalog[n]),
                              key=kept("compare_models", available[:2],
                                       lambda v: isinstance(v, list) and all(m in available for m in v)))
    if unavailable:
        left.caption("Not available here: " + "; ".join(f"{s.label} ({s.availability.status})" for s in unavailable))
    shared = [t for t in TASK_LABELS if models and all(t in catalog[m].tasks for m in models)]
    if models and not shared:
        right.error("These models share no task.")
        return models, None, None
    tasks = shared or ["text"]
    task = right.selectbox("Task", tasks, format_func=lambda t: TASK_LABELS.get(t, t),
                           key=kept("compare_task", tasks[0], lambda t: t in tasks))
    prompt = st.text_area("Prompt", key=kept("compare_prompt", DEFAULT_PROMPT, _is_text)) if task == "prompt" else None
    return models, task, prompt


def main() -> None:
    require_app_shell("pages/compare.py")
    st.title("Compare models")
    get_workspace().collect()
    catalog = {status.name: status for status in model_catalog()}
    workspace, store = workspace_with_uploads("compare_upload", "A scan or PDF")
    models, task, prompt = _choose(catalog)
    if workspace.document is None:
        st.caption("Upload a document, pick two or more models and run them on the same page.")
        return
    document = document_picker(workspace, "compare_document")
    if task is None:
        return
    selection = "1"
    if document.page_count > 1:
        selection = st.text_input(f"Pages (of {document.page_count})", key=kept("compare_pages", "1", _is_text),
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

    entries = workspace.entries
    job = workspace.running("compare")
    buttons = st.columns([2, 1, 5], vertical_alignment="center")
    why = "A run is going on: wait for it, or stop it." if job is not None else \
        "Pick at least two models." if len(models) < 2 else None
    buttons[0].button(f"Run {len(models)} models", type="primary", disabled=why is not None, key="compare_run",
                      on_click=_start, args=(workspace,), width="stretch")
    if job is not None:
        buttons[1].button("Stop run", key="compare_stop", on_click=job.stop.set, disabled=job.stop.is_set(),
                          icon=":material/stop_circle:", help="Stop after the page being read; finished pages are kept")
    if why is not None:
        buttons[2].caption(why)
    flash = st.session_state.pop("compare_flash", None)
    if flash:
        st.info(flash)
    panel = st.empty()
    if job is not None:
        follow_later(job, panel, job.labels)
    if len(models) < 2:
        st.info("Pick at least two models to compare.")
    if not models:
        workspace.autosave(store)
        return

    labels = {m: catalog[m].label for m in models}
    index = indices[0]
    if len(indices) > 1:
        index = st.selectbox("Show page", indices, format_func=lambda i: f"Page {i + 1}",
                             key=kept("compare_view_page", indices[0], lambda v: v in indices))
    columns = st.columns(len(models))
    for column, model in zip(columns, models):
        with column:
            _show_column(workspace, document, index, model, labels[model], entries.get(key(index, model)),
                         running=job is not None)

    results: dict[str, dict[int, PageResult]] = {}
    for model in models:
        done = {i: entry.result for i in indices if (entry := entries.get(key(i, model))) and entry.result}
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
    workspace.autosave(store)


main()
