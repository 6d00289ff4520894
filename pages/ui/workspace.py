"""The workspace: what a person is working on, kept across the pages of the app and beyond the tab.

Streamlit forgets the state of every widget a page does not draw, so an upload, a "Pages to run" or a
pasted reference would vanish on a visit to another page. The workspace lives in plain session-state
keys instead: the documents, which one is open, the results and their corrections, and the values of
the widgets a page marks as kept (re-seeded when the page is drawn again). A snapshot goes to the
results store whenever it changes, so that after a refresh or a server restart one click brings it
back ("Restore last session").
"""
from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import streamlit as st

from models.contract import ResultKey
from pages.ui.common import open_document_cached
from pages.ui.run import Entry, RunJob
from pages.ui.shell import KEPT
from utils.documents.reader import Document, DocumentError
from utils.messages import one_line
from utils.store import SavedWorkspace, Store

_KEY = "workspace"


@dataclass
class Workspace:
    session: str = field(default_factory=lambda: uuid.uuid4().hex)
    documents: dict[str, Document] = field(default_factory=dict)  # by digest, in the order added
    selected: str | None = None
    entries: dict[ResultKey, Entry] = field(default_factory=dict)
    jobs: list[RunJob] = field(default_factory=list)
    # uploader key -> {file_id: (digest, name)}, or (None, why it cannot be read) for a file that cannot
    uploads: dict[str, dict[str, tuple[str | None, str]]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # one-line warnings to show once (store failures, restore)
    saved: str | None = None  # the snapshot last written to the store
    restored: bool = False  # a saved workspace was offered: do not offer it again

    # ---- documents --------------------------------------------------------------------------

    @property
    def document(self) -> Document | None:
        return self.documents.get(self.selected or "")

    def add(self, document: Document) -> None:
        """Add (or bring back) a document and open it: the newest document is the one shown."""
        self.documents[document.digest] = document
        self.selected = document.digest

    def remove(self, digest: str) -> None:
        """Close a document; its results stay in the store (History), not in the workspace."""
        self.documents.pop(digest, None)
        self.entries = {k: e for k, e in self.entries.items() if k.digest != digest}
        for seen in self.uploads.values():
            for file_id in [f for f, (d, _) in seen.items() if d == digest]:
                seen.pop(file_id)
        if self.selected == digest:
            self.selected = next(reversed(self.documents), None)

    def sync_uploads(self, key: str, files: Iterable[Any], fresh: bool, store: Store | None) -> None:
        """Follow an uploader: its new files join the workspace (or get one error each, for as long as
        the file is in the uploader), a file removed from it leaves the workspace. `fresh`: the uploader
        was just drawn again after another page, empty, which removes no document."""
        seen = {} if fresh else self.uploads.get(key, {})
        current = {f.file_id: f for f in files}
        now: dict[str, tuple[str | None, str]] = {}
        for file_id, upload in current.items():
            if file_id in seen:
                now[file_id] = seen[file_id]
                continue
            try:
                document = open_document_cached(file_id, upload.name, upload.getvalue())
            except DocumentError as exc:
                now[file_id] = (None, str(exc))
                continue
            self.add(document)
            now[file_id] = (document.digest, document.name)
            _keep_source(store, document, self.notes)
        staying = {digest for digest, _ in now.values() if digest}
        for file_id, (digest, _) in list(seen.items()):  # remove() forgets the file ids of a digest
            if file_id not in current and digest and digest not in staying:
                self.remove(digest)
        self.uploads[key] = now

    def rejected(self, key: str) -> list[str]:
        """One error per file in this uploader that cannot be read (the same file dropped twice: one)."""
        return list(dict.fromkeys(message for digest, message in self.uploads.get(key, {}).values()
                                  if digest is None))

    # ---- results ------------------------------------------------------------------------------

    def collect(self) -> None:
        """Take in what the runs finished since the last look; a finished run is let go."""
        for job in list(self.jobs):
            for entry in job.take():
                self.entries[entry.key] = entry
            if job.finished:
                for entry in job.take():
                    self.entries[entry.key] = entry
                self.notes.extend(n for n in job.progress().notes if n not in self.notes)
                self.jobs.remove(job)

    def running(self, kind: str) -> RunJob | None:
        return next((job for job in self.jobs if job.kind == kind and not job.finished), None)

    def correct(self, entry: Entry, text: str, store: Store | None) -> None:
        """The user's edit of a result's text; the recognised text itself again means no correction."""
        correction = None if entry.result is None or text == entry.result.text else text
        entry.correction = correction
        if store is not None and entry.result_id is not None:
            try:
                store.correct(entry.result_id, correction)
            except Exception as exc:  # the edit stays in this session; the user learns it is not kept
                self.notes.append(f"The correction could not be saved in the results store ({one_line(exc)}).")

    # ---- snapshot and restore -----------------------------------------------------------------

    def snapshot(self) -> dict:
        return {
            "documents": [{"digest": d.digest, "name": d.name} for d in self.documents.values()],
            "selected": self.selected,
            "results": [e.result_id for e in self.entries.values() if e.result_id is not None
                        and e.key.digest in self.documents],
            "widgets": {k: v for k, v in st.session_state.get(KEPT, {}).items() if _json_safe(v)},
        }

    def autosave(self, store: Store | None) -> None:
        """Write the snapshot to the store when it changed (an empty workspace is never saved over one)."""
        if store is None or not self.documents:
            return
        state = self.snapshot()
        text = json.dumps(state, sort_keys=True, ensure_ascii=False)
        if text == self.saved:
            return
        notes = self.notes

        def save() -> None:
            try:
                store.save_workspace(self.session, state)
            except Exception as exc:  # the work goes on; only the restore after a refresh is lost
                notes.append(f"The workspace could not be saved in the results store ({one_line(exc)}).")

        _saver().submit(save)  # off the page's path: a disk busy with fsyncs must not slow the page
        self.saved = text

    def restore(self, store: Store, saved: SavedWorkspace) -> list[str]:
        """Bring a saved workspace back: its documents (from the store's kept copies), results with their
        corrections, and kept widget values. Returns what could not be brought back."""
        missing: list[str] = []
        for item in saved.state.get("documents", []):
            try:
                document = store.open_document(item["digest"], item["name"])
            except DocumentError as exc:
                document, reason = None, one_line(exc)
            else:
                reason = "no copy is kept any more (store.max_files_mb)"
            if document is None:
                missing.append(f"{item['name']}: {reason}")
                continue
            self.documents[document.digest] = document
        selected = saved.state.get("selected")
        self.selected = selected if selected in self.documents else next(reversed(self.documents), None)
        for result_id in saved.state.get("results", []):
            stored = store.get(result_id)
            if stored is None or stored.key.digest not in self.documents:
                continue
            self.entries[stored.key] = Entry(stored.key, stored.document_name, stored.options, stored.result,
                                             result_id=stored.id, correction=stored.correction)
        kept = st.session_state.setdefault(KEPT, {})
        for key, value in saved.state.get("widgets", {}).items():
            kept[key] = value
            st.session_state.pop(key, None)  # re-seeded from the kept value when its page draws it
        self.restored = True
        return missing

    def open_stored(self, store: Store, result_ids: Iterable[int]) -> list[str]:
        """Open stored results (and their document) in the workspace, e.g. from History."""
        problems: list[str] = []
        for result_id in result_ids:
            stored = store.get(result_id)
            if stored is None:
                continue
            if stored.key.digest not in self.documents:
                document = store.open_document(stored.key.digest, stored.document_name, stored.render_dpi)
                if document is None:
                    problems.append(f"{stored.document_name}: no copy of the document is kept any more")
                    continue
                self.documents[document.digest] = document
            self.selected = stored.key.digest
            self.entries[stored.key] = Entry(stored.key, stored.document_name, stored.options, stored.result,
                                             result_id=stored.id, correction=stored.correction)
        return problems


@st.cache_resource(show_spinner=False)
def _saver() -> ThreadPoolExecutor:
    """One thread writes every session's snapshots, in the order they were taken."""
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="workspace-save")


def _json_safe(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def _keep_source(store: Store | None, document: Document, notes: list[str]) -> None:
    """A copy of the source in the store, so that a restore after a restart can open it again."""
    if store is None:
        return
    try:
        store.keep(document)
    except Exception as exc:
        notes.append(f"{document.name}: no copy kept in the results store ({one_line(exc)}); "
                     "it will not come back after a restart.")


def get_workspace() -> Workspace:
    workspace = st.session_state.get(_KEY)
    if workspace is None:
        workspace = st.session_state[_KEY] = Workspace()
    return workspace


def kept(key: str, default: Any, valid: Callable[[Any], bool] | None = None) -> str:
    """Seed widget `key` before it is drawn: its value from the last time a page drew it (Streamlit
    drops it on other pages), else `default`; a kept value that is no longer valid gives way to the
    default. Returns the key, for `key=`. The widget must be drawn without its own default value."""
    values = st.session_state.setdefault(KEPT, {})
    if key in st.session_state:
        value = st.session_state[key]
    else:
        value = values.get(key, default)
    if valid is not None and not valid(value):
        value = default
    if key not in st.session_state or st.session_state[key] is not value:
        st.session_state[key] = value
    values[key] = value
    return key


def flag(name: str) -> bool:
    """A kept yes/no about the widgets (e.g. "the user typed into this box"), restored with them."""
    return bool(st.session_state.get(KEPT, {}).get(name))


def set_flag(name: str) -> None:
    st.session_state.setdefault(KEPT, {})[name] = True
