"""Extract page: a template's fields (invoice, receipt, passport, ...) out of documents, as an
editable table beside the page with each field's box, corrections by hand, JSON / CSV export.
The documents are the workspace's (uploaded here or on any page) or those of a batch job (opened
one at a time from the store's copies or their source files), one row each in the CSV.
Every extraction and correction is kept in the results store: the same document, template and
model shows its kept extraction again after a refresh or a restart, without running.
UI only: extraction runs through utils.extraction and the loader."""
from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import pandas as pd
import streamlit as st
from PIL import Image, ImageDraw

from pages.ui.common import get_loader, model_catalog, page_image, require_app_shell
from pages.ui.session import document_picker, workspace_with_uploads
from pages.ui.stored import get_store
from utils.config import cached_settings
from utils.documents.reader import Document, parse_page_selection
from utils.extraction import templates as template_files
from utils.extraction.extract import engine_kind, extract_document
from utils.extraction.normalise import NotAValue
from utils.extraction.result import Correction, Extraction, apply_corrections, correct, to_csv
from utils.extraction.templates import Template, TemplateSet, load_templates
from utils.messages import one_line

FIELD_COLOUR = (230, 85, 13)
EDITABLE = "Value"

ResultKey = tuple[str, str, str]  # (document key, template name, model)
WORKSPACE, JOB = "The workspace's documents", "A batch job's documents"


class Source:
    """A document to extract from, opened only when it is its turn (a job may hold thousands)."""

    def __init__(self, name: str, digest: str | None, open_document: Callable[[], Document]):
        self.name, self.digest, self.open = name, digest, open_document

    @classmethod
    def of(cls, document: Document) -> Source:
        return cls(document.name, document.digest, partial(_itself, document))


def _itself(document: Document) -> Document:
    return document


@st.cache_data(ttl=10, show_spinner=False)
def _templates(directory: str, models: tuple[str, ...]) -> TemplateSet:
    """Read again every few seconds, so an edited template file shows without a restart."""
    return load_templates(directory, known_models=models)


def _results() -> dict[ResultKey, Extraction]:
    """This session's extractions, corrections made, by (document, template, model)."""
    return st.session_state.setdefault("extract_results", {})


def _corrections() -> dict[ResultKey, list[Correction]]:
    return st.session_state.setdefault("extract_corrections", {})


def _stored_ids() -> dict[ResultKey, int]:
    """The store's id of each extraction shown, for its corrections."""
    return st.session_state.setdefault("extract_stored_ids", {})


def _keep(key: ResultKey, document: Document, extraction: Extraction) -> None:
    """A new extraction: shown from the session, kept in the store (without a store, in this tab only)."""
    _results()[key] = extraction
    _corrections().pop(key, None)
    _stored_ids().pop(key, None)
    if extraction.error is not None:
        return
    try:
        _stored_ids()[key] = get_store().extractions.save(document, extraction)
    except Exception as exc:  # the result is still shown; the user reads why it is not kept
        st.warning(f"The extraction could not be saved in the results store ({one_line(exc)}); it is kept in "
                   f"this tab only.")


def _reopen(key: ResultKey, template: Template) -> None:
    """The newest extraction kept for this document, template and model, with its corrections, when
    this session has none (a refresh, a restart, another tab)."""
    if key in _results():
        return
    try:
        stored = get_store().extractions.latest(*key)
    except Exception:  # no store, no kept extraction: the page offers to run
        return
    if stored is None:
        return
    _results()[key] = apply_corrections(template, stored.extraction, stored.corrections)
    _corrections()[key] = list(stored.corrections)
    _stored_ids()[key] = stored.id
    st.session_state.setdefault("extract_reopened", {})[key] = stored.created_at


def keep_corrections(key: ResultKey, extraction: Extraction, corrections: list[Correction]) -> None:
    """Keep a corrected extraction and the corrections that made it: in the session, and in the
    results store beside the extraction they correct."""
    _results()[key] = extraction
    _corrections().setdefault(key, []).extend(corrections)
    stored_id = _stored_ids().get(key)
    if stored_id is None:
        return
    try:
        for correction in corrections:
            get_store().extractions.correct(stored_id, correction.field, correction.after)
    except Exception as exc:  # a toast: the table is drawn afresh right after a correction
        st.toast(f"The correction could not be saved in the results store ({one_line(exc)}); it is kept in this "
                 f"tab only.")


def _editor_version(key: ResultKey) -> int:
    """Bumped whenever the values change underneath the table, so it shows them afresh."""
    return st.session_state.setdefault("extract_editor_versions", {}).get(key, 0)


def _bump_editor(key: ResultKey) -> None:
    versions = st.session_state.setdefault("extract_editor_versions", {})
    versions[key] = versions.get(key, 0) + 1


def _run(sources: Sequence[Source], selection: str, template: Template, model: str) -> None:
    loader = get_loader()
    failed = 0
    with st.status(f"Extracting {template.label} fields with {model}…", expanded=True) as status:
        bar = st.progress(0.0)
        live = st.empty()
        for number, source in enumerate(sources):
            try:
                document = source.open()
            except Exception as exc:  # a job's document whose copy and source are gone: one line, go on
                st.error(one_line(exc))
                failed += 1
                continue
            streamed: list[str] = []

            def show_token(piece: str, streamed: list[str] = streamed) -> None:
                streamed.append(piece)
                live.code("".join(streamed)[-2000:], language=None)

            def on_page(done: int, total: int, index: int, document: Document = document,
                        number: int = number) -> None:
                bar.progress((number + done / total) / len(sources),
                             text=f"{document.name}: page {index + 1} ({done + 1} of {total})")

            try:
                pages = parse_page_selection(selection, document.page_count)
                extraction = extract_document(loader, document, template, model, pages, on_page=on_page,
                                              on_token=show_token)
            except Exception as exc:  # one line for the user; earlier results stay
                st.error(f"{document.name}: {one_line(exc)}")
                failed += 1
                continue
            key = (document.digest, template.name, model)
            _keep(key, document, extraction)
            st.session_state.setdefault("extract_reopened", {}).pop(key, None)
            _bump_editor(key)
        live.empty()
        bar.progress(1.0)
        status.update(label=f"Extracted {len(sources) - failed} of {len(sources)} document(s)",
                      state="error" if failed == len(sources) else "complete", expanded=bool(failed))


def _display(value, kind: str = "string") -> str:
    if value is None:
        return ""
    return f"{value:.2f}" if kind == "amount" and isinstance(value, float) else str(value)


def _table(template: Template, extraction: Extraction) -> pd.DataFrame:
    rows = []
    for name, spec in template.fields.items():
        field = extraction.fields.get(name)
        rows.append({"Field": name, EDITABLE: _display(field.value if field else None, spec.type), "Type": spec.type,
                     "Required": spec.required, "Read from": (field.source or "") if field else "",
                     "Page": (field.page + 1) if field and field.page is not None else None,
                     "Corrected": bool(field and field.corrected),
                     "Engine read": _display(field.original, spec.type) if field and field.corrected else ""})
    return pd.DataFrame(rows)


def draw_fields(image: Image.Image, extraction: Extraction, page: int) -> Image.Image:
    """The page with the box of every field read from it, named."""
    canvas = image.convert("RGB").copy()
    draw = ImageDraw.Draw(canvas)
    width = max(2, round(max(canvas.size) / 500))
    for name, field in extraction.fields.items():
        if field.bbox is None or field.page != page or field.value is None:
            continue
        x1, y1, x2, y2 = field.bbox
        pad = width * 2
        draw.rectangle((x1 - pad, y1 - pad, x2 + pad, y2 + pad), outline=FIELD_COLOUR, width=width)
        draw.text((x1, max(0, y1 - pad - 12 * width)), name, fill=FIELD_COLOUR,
                  font_size=max(12, 6 * width))
    return canvas


def _apply_edits(key: ResultKey, template: Template, extraction: Extraction, edited: pd.DataFrame) -> None:
    """Corrections typed into the table: normalised and kept, or one line saying why not."""
    corrections: list[Correction] = []
    for _, row in edited.iterrows():
        name, typed = row["Field"], row[EDITABLE]
        typed = "" if typed is None or (isinstance(typed, float) and pd.isna(typed)) else str(typed)
        kind = template.fields[name].type
        if typed == _display(extraction.values().get(name), kind):
            continue
        try:
            extraction, correction = correct(template, extraction, name, typed)
        except NotAValue as exc:
            st.error(f"{exc} — kept {_display(extraction.values().get(name), kind) or 'no value'}")
            continue
        corrections.append(correction)
    if corrections:
        keep_corrections(key, extraction, corrections)
        _bump_editor(key)
        st.rerun()


def _show(key: ResultKey, template: Template, document: Document, extraction: Extraction) -> None:
    if extraction.error:
        st.error(f"{document.name}: {extraction.error}")
        return
    for problem in extraction.problems:
        st.warning(problem)
    read_pages = extraction.pages or [0]
    page = read_pages[0]
    left, right = st.columns([1, 1])
    with right:
        reopened = st.session_state.get("extract_reopened", {}).get(key)
        since = f" · kept from {reopened:%Y-%m-%d %H:%M} UTC" if reopened is not None else ""
        st.caption(f"{extraction.found()} of {len(template.fields)} fields found{since} · edit a value to correct it")
        edited = st.data_editor(
            _table(template, extraction), key=f"fields_{'_'.join(key)}_{_editor_version(key)}", hide_index=True,
            width="stretch", disabled=["Field", "Type", "Required", "Read from", "Page", "Corrected", "Engine read"],
            column_config={EDITABLE: st.column_config.TextColumn(EDITABLE, help="dates as 2024-03-12 or "
                                                                 "12 марта 2024; amounts as 1 234,56 or 1,234.56")})
        _apply_edits(key, template, extraction, edited)
        kept = _corrections().get(key, [])
        if kept:
            with st.expander(f"{len(kept)} correction(s) kept"):
                kinds = {name: spec.type for name, spec in template.fields.items()}
                st.dataframe(pd.DataFrame([{"field": c.field, "at": c.at,
                                            "before": _display(c.before, kinds.get(c.field, "string")),
                                            "after": _display(c.after, kinds.get(c.field, "string"))}
                                           for c in kept]), hide_index=True)
        if extraction.answers:
            with st.expander("What the model answered"):
                for answer in extraction.answers:
                    st.code(answer or "(empty)", language=None)
    with left:
        if len(read_pages) > 1:
            page = st.selectbox("Page", read_pages, format_func=lambda i: f"Page {i + 1}")
        image = page_image(document, page)
        if image is not None:
            st.image(draw_fields(image, extraction, page), caption=f"{document.name}, page {page + 1}",
                     width="stretch")


def _downloads(template: Template, model: str, document: Document, extraction: Extraction,
               sources: Sequence[Source], group: str) -> None:
    """One document's files, and the group's: every document of the workspace or of the job extracted
    with this template and model in this session (shown or reopened), one row each. Only the session is
    looked at: a job of thousands of documents must not cost a store query each on every rerun."""
    stem = Path(document.name).stem
    results = _results()
    batch = [results[key] for source in sources if (key := (source.digest or "", template.name, model)) in results]
    cols = st.columns(4)
    cols[0].download_button("⬇ JSON", json.dumps(extraction.to_json(), ensure_ascii=False, indent=2),
                            file_name=f"{stem}_{template.name}.json", mime="application/json", key="dl_extract_json")
    cols[1].download_button("⬇ CSV", to_csv(template, [extraction]), file_name=f"{stem}_{template.name}.csv",
                            mime="text/csv", key="dl_extract_csv")
    if len(batch) > 1:
        cols[2].download_button(f"⬇ JSON (all {len(batch)})", json.dumps(
            {"template": template.name, "model": model, "documents": [e.to_json() for e in batch]},
            ensure_ascii=False, indent=2), file_name=f"{group}_{template.name}_{model}.json", mime="application/json",
            key="dl_extract_json_all")
        cols[3].download_button(f"⬇ CSV (all {len(batch)})", to_csv(template, batch),
                                file_name=f"{group}_{template.name}_{model}.csv", mime="text/csv",
                                key="dl_extract_csv_all")


def _workspace_sources() -> tuple[list[Source], Document, str] | None:
    """The workspace's documents (uploaded here or on any page) and the one open."""
    workspace, _ = workspace_with_uploads("extract_upload", "Scans or PDFs")
    if workspace.document is None:
        st.caption("Upload one or more documents to start.")
        return None
    document = document_picker(workspace, "extract_document")
    sources = [Source.of(d) for d in workspace.documents.values()]
    return sources, document, "workspace"


def _job_sources() -> tuple[list[Source], Document, str] | None:
    """A batch job's documents, each opened when it is needed, and the one shown."""
    from utils.jobs.engine import job_document

    store = get_store()
    jobs = store.jobs.recent()
    if not jobs:
        st.caption("No batch job yet: start one on the Batch page.")
        return None
    job = st.selectbox("Batch job", jobs, key="extract_job",
                       format_func=lambda j: f"#{j.id} {j.name} · {j.status} · {j.created_at:%Y-%m-%d %H:%M}")
    settings = cached_settings()
    entries = [e for e in store.jobs.documents(job.id) if e.digest is not None]
    if not entries:
        st.caption("This job has no readable document.")
        return None
    sources = [Source(e.name, e.digest, partial(job_document, store, settings, e)) for e in entries]
    shown = st.selectbox("Document", range(len(entries)), key=f"extract_job_document_{job.id}",
                         format_func=lambda i: entries[i].name)
    for source in sources[shown:] + sources[:shown]:  # a document that is gone: say so, show the next one
        try:
            return sources, source.open(), f"job{job.id}"
        except Exception as exc:
            st.error(one_line(exc))
    return None


def main() -> None:
    require_app_shell("pages/extract.py")
    st.title("Extract fields")
    catalog = {s.name: s for s in model_catalog()}
    model = st.session_state.get("model")
    if model not in catalog:
        st.info("No model is available. Open the System page to see why.")
        return
    status = catalog[model]
    found = _templates(str(template_files.TEMPLATES_DIR), tuple(catalog))
    for error in found.errors:
        st.error(f"Template not loaded: {error}")
    if not found.templates:
        st.info("No document template could be loaded.")
        return
    names = list(found.templates)
    top = st.columns([2, 3])
    name = top[0].selectbox("Template", names, format_func=lambda n: found.templates[n].label,
                            index=names.index("invoice") if "invoice" in names else 0, key="extract_template")
    template = found.templates[name]
    how = ("asked for JSON matching the template" if engine_kind(get_loader(), model) == "vlm"
           else "fields found by their labels in the recognised text")
    top[1].caption(f"{template.description}  \n**{status.label}**: {how}.")
    with st.expander(f"Fields of {template.label}"):
        st.dataframe(pd.DataFrame([{"field": n, "type": f.type, "required": f.required, "description": f.description,
                                    "labels": ", ".join(f.labels)} for n, f in template.fields.items()]),
                     hide_index=True)

    if st.segmented_control("Documents", [WORKSPACE, JOB], key="extract_source", default=WORKSPACE) == JOB:
        chosen = _job_sources()
    else:
        chosen = _workspace_sources()
    if chosen is None:
        return
    sources, document, group = chosen
    selection = st.text_input("Pages to read", "1", help='Like "1-3,7"; empty = all pages', key="extract_pages") \
        if document.page_count > 1 or len(sources) > 1 else "1"

    buttons = st.columns([1, 1, 3])
    available = status.availability.available
    if buttons[0].button(f"Extract with {status.label}", type="primary", disabled=not available, key="extract_run"):
        _run([Source.of(document)], selection, template, model)
    if len(sources) > 1 and buttons[1].button(f"Extract all {len(sources)}", disabled=not available,
                                              key="extract_run_all"):
        _run(sources, selection, template, model)

    key = (document.digest, template.name, model)
    _reopen(key, template)
    extraction = _results().get(key)
    if extraction is None:
        image = page_image(document, 0)
        if image is not None:
            st.image(image, caption=f"{document.name} — not extracted yet with {status.label}", width="stretch")
        return
    _show(key, template, document, extraction)
    st.subheader("Download")
    _downloads(template, model, document, extraction, sources, group)


main()
