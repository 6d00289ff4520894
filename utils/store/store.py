"""The results store: every page result, with what produced it, in one SQLite file (WAL mode).

Safe for many threads and processes at once: every call opens its own short connection, writes run in
`BEGIN IMMEDIATE` transactions and wait (busy timeout) for one another. Source documents are kept,
content-addressed, in a folder beside the database so a stored page can be shown again with its
image and boxes; they are dropped least recently used first beyond the size limit (the results stay),
except those an unfinished batch job still needs.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import sqlite3
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from datetime import time as dtime
from pathlib import Path
from typing import Any

from PIL import Image

from models.contract import PageResult, ResultKey, RunOptions
from utils.config import ROOT, DocumentLimits, Settings
from utils.documents.reader import Document, DocumentError, open_document
from utils.store.chats import Chats
from utils.store.extractions import Extractions
from utils.store.jobs import Jobs
from utils.store.schema import migrate

ENV_PATH = "OCR_STORE_DB"  # overrides store.path: tests and second instances point elsewhere
BUSY_TIMEOUT_MS = 30_000
SUFFIXES = {"jpeg": ".jpg", "tiff": ".tif"}
PREVIEW_CHARS = 160
KEPT_WORKSPACES = 20  # the newest sessions' workspaces; older ones are dropped as new ones are saved
# The newest correction of a result, as one more column of a results row.
CORRECTION = ("(SELECT c.text FROM corrections c WHERE c.result_id = r.id "
              "ORDER BY c.created_at DESC, c.id DESC LIMIT 1) AS correction")


def store_path(settings: Settings) -> Path:
    configured = os.environ.get(ENV_PATH) or settings.store.path
    path = Path(configured).expanduser()
    return path if path.is_absolute() else ROOT / path


def _timestamp(value: date | datetime | None, end: bool = False) -> float | None:
    """A date means its whole day (local time); a naive datetime is local time."""
    if value is None:
        return None
    if not isinstance(value, datetime):
        value = datetime.combine(value, dtime.max if end else dtime.min)
    return value.timestamp()


def _fts_query(text: str) -> str:
    """Every word must occur (as a prefix); quoted, so the user's punctuation is never FTS syntax."""
    words = re.findall(r"\w+", text.replace("ё", "е").replace("Ё", "Е"))
    return " ".join(f'"{word}"*' for word in words)


def _events_json(events: Sequence[Any]) -> str:
    return json.dumps([e.model_dump(mode="json") if hasattr(e, "model_dump") else e for e in events],
                      ensure_ascii=False)


@dataclass(frozen=True)
class ResultSummary:
    """One row of the history list: enough to show and filter it without loading the whole result."""

    id: int
    key: ResultKey
    document_name: str
    created_at: datetime
    chars: int
    preview: str
    seconds: float | None
    profile: str
    device: str
    job_id: int | None
    corrected: bool = False


@dataclass(frozen=True)
class StoredResult:
    id: int
    key: ResultKey
    document_name: str
    document_kind: str | None
    render_dpi: int | None
    result: PageResult
    options: RunOptions
    events: list[dict]
    job_id: int | None
    created_at: datetime
    correction: str | None = None  # the user's edit of result.text (None: the recognised text stands)

    @property
    def text(self) -> str:
        """The text as the user wants it: the correction if there is one."""
        return self.correction if self.correction is not None else self.result.text


@dataclass(frozen=True)
class SavedWorkspace:
    session: str
    state: dict
    updated_at: datetime


@dataclass(frozen=True)
class KeptDocument:
    digest: str
    name: str
    kind: str
    page_count: int
    bytes: int
    kept: bool


class Store:
    def __init__(self, path: str | Path, files_dir: str | Path | None = None, max_files_mb: float = 2048,
                 limits: DocumentLimits | None = None):
        self.path = Path(path)
        self.files_dir = Path(files_dir) if files_dir else self.path.parent / "files"
        self.max_files_bytes = int(max_files_mb * 1024 * 1024)
        self.limits = limits or DocumentLimits()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.connect() as con:
            con.execute("PRAGMA journal_mode=WAL")
            migrate(con, str(self.path))
            self.has_fts = con.execute(
                "SELECT 1 FROM sqlite_master WHERE name = 'results_fts'").fetchone() is not None
        self.jobs = Jobs(self)
        self.chats = Chats(self)
        self.extractions = Extractions(self)

    @classmethod
    def from_settings(cls, settings: Settings) -> Store:
        files_dir = settings.store.files_dir
        if files_dir and not Path(files_dir).expanduser().is_absolute():
            files_dir = str(ROOT / files_dir)
        return cls(store_path(settings), files_dir, settings.store.max_files_mb, settings.documents)

    # ---- connections ------------------------------------------------------------------------

    @contextlib.contextmanager
    def connect(self) -> Iterator[sqlite3.Connection]:
        con = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
        try:
            con.row_factory = sqlite3.Row
            con.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            con.execute("PRAGMA foreign_keys = ON")
            con.execute("PRAGMA synchronous = NORMAL")  # WAL: a crash loses no committed page's consistency
            yield con
        finally:
            con.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction that takes the write lock at once (no upgrade deadlock between writers)."""
        with self.connect() as con:
            con.execute("BEGIN IMMEDIATE")
            try:
                yield con
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")

    # ---- results ----------------------------------------------------------------------------

    def save(self, key: ResultKey, result: PageResult, document: Document, *, name: str | None = None,
             options: RunOptions | None = None, events: Sequence[Any] = ()) -> int:
        """Write one page result before it is shown; returns its id. `name` defaults to the document's
        name; `events` are the recovery events that happened while this page ran."""
        self.keep(document, name)
        with self.transaction() as con:
            return self.insert_result(con, key, result, document, name=name, options=options, events=events)

    def insert_result(self, con: sqlite3.Connection, key: ResultKey, result: PageResult, document: Document, *,
                      name: str | None = None, options: RunOptions | None = None, events: Sequence[Any] = (),
                      job_id: int | None = None) -> int:
        """The insert of `save`, inside the caller's transaction (a batch job marks its page in the same one)."""
        cursor = con.execute(
            """INSERT INTO results (digest, page, model, task, variant, document_name, document_kind, render_dpi,
                   options, profile, device, text, markdown, seconds, load_seconds, tokens, truncated, result,
                   events, job_id, created_at)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
            (key.digest, key.page, key.model, key.task, key.variant, name or document.name, document.kind,
             document.dpi if document.kind == "pdf" else None,
             (options or RunOptions()).model_dump_json(), result.profile, result.device, result.text,
             result.markdown, result.seconds, result.load_seconds, result.tokens, int(result.truncated),
             result.model_dump_json(), _events_json(events), job_id, time.time()))
        return int(cursor.lastrowid or 0)

    def _where(self, document: str | None, model: str | None, task: str | None, since: date | datetime | None,
               until: date | datetime | None, search: str | None, job_id: int | None,
               digest: str | None) -> tuple[str, list[Any]]:
        clauses: list[str] = []
        params: list[Any] = []
        if document:
            clauses.append("r.document_name = ?")
            params.append(document)
        for column, value in (("r.model", model), ("r.task", task), ("r.job_id", job_id), ("r.digest", digest)):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        if since is not None:
            clauses.append("r.created_at >= ?")
            params.append(_timestamp(since))
        if until is not None:
            clauses.append("r.created_at <= ?")
            params.append(_timestamp(until, end=True))
        if search and search.strip():
            query = _fts_query(search)
            if self.has_fts and query:
                clauses.append("r.id IN (SELECT rowid FROM results_fts WHERE results_fts MATCH ?)")
                params.append(query)
            else:
                clauses.append("(r.text LIKE ? OR r.markdown LIKE ? OR r.document_name LIKE ?)")
                params += [f"%{search.strip()}%"] * 3
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", params

    def results(self, *, document: str | None = None, model: str | None = None, task: str | None = None,
                since: date | datetime | None = None, until: date | datetime | None = None,
                search: str | None = None, job_id: int | None = None, digest: str | None = None,
                limit: int = 200, offset: int = 0) -> list[ResultSummary]:
        """Stored results, newest first. `document` is a name as stored; dates are local days."""
        where, params = self._where(document, model, task, since, until, search, job_id, digest)
        with self.connect() as con:
            rows = con.execute(
                f"""SELECT r.id, r.digest, r.page, r.model, r.task, r.variant, r.document_name, r.created_at,
                       length(r.text) AS chars, substr(r.text, 1, {PREVIEW_CHARS}) AS preview, r.seconds,
                       r.profile, r.device, r.job_id,
                       EXISTS (SELECT 1 FROM corrections c WHERE c.result_id = r.id) AS corrected
                    FROM results r{where} ORDER BY r.created_at DESC, r.id DESC LIMIT ? OFFSET ?""",
                [*params, limit, offset]).fetchall()
        return [ResultSummary(
            id=row["id"], key=ResultKey(digest=row["digest"], page=row["page"], model=row["model"], task=row["task"],
                                        variant=row["variant"]),
            document_name=row["document_name"], created_at=datetime.fromtimestamp(row["created_at"], UTC),
            chars=row["chars"], preview=" ".join((row["preview"] or "").split()), seconds=row["seconds"],
            profile=row["profile"], device=row["device"], job_id=row["job_id"], corrected=bool(row["corrected"]))
            for row in rows]

    def count(self, **filters: Any) -> int:
        where, params = self._where(filters.get("document"), filters.get("model"), filters.get("task"),
                                    filters.get("since"), filters.get("until"), filters.get("search"),
                                    filters.get("job_id"), filters.get("digest"))
        with self.connect() as con:
            return int(con.execute(f"SELECT count(*) FROM results r{where}", params).fetchone()[0])

    def facets(self) -> dict[str, list[str]]:
        """The distinct document names, models and tasks there are results for (the filters' choices)."""
        with self.connect() as con:
            return {column: [row[0] for row in con.execute(
                f"SELECT DISTINCT {column} FROM results ORDER BY {column} COLLATE NOCASE")]
                for column in ("document_name", "model", "task")}

    @staticmethod
    def _stored(row: sqlite3.Row) -> StoredResult:
        return StoredResult(
            id=row["id"], key=ResultKey(digest=row["digest"], page=row["page"], model=row["model"],
                                        task=row["task"], variant=row["variant"]),
            document_name=row["document_name"], document_kind=row["document_kind"], render_dpi=row["render_dpi"],
            result=PageResult.model_validate_json(row["result"]),
            options=RunOptions.model_validate_json(row["options"]),
            events=json.loads(row["events"]), job_id=row["job_id"],
            created_at=datetime.fromtimestamp(row["created_at"], UTC), correction=row["correction"])

    def get(self, result_id: int) -> StoredResult | None:
        with self.connect() as con:
            row = con.execute(f"SELECT r.*, {CORRECTION} FROM results r WHERE id = ?", (result_id,)).fetchone()
        return self._stored(row) if row else None

    def latest(self, key: ResultKey) -> StoredResult | None:
        """The newest result with this key (None: this page was never run this way)."""
        with self.connect() as con:
            row = con.execute(
                f"""SELECT r.*, {CORRECTION} FROM results r
                    WHERE digest = ? AND page = ? AND model = ? AND task = ? AND variant IS ?
                    ORDER BY created_at DESC, id DESC LIMIT 1""",
                (key.digest, key.page, key.model, key.task, key.variant)).fetchone()
        return self._stored(row) if row else None

    def document_results(self, key: ResultKey) -> list[StoredResult]:
        """The newest result of every page of key's document with key's model, task and variant, by page."""
        with self.connect() as con:
            rows = con.execute(
                f"""SELECT r.*, {CORRECTION} FROM results r WHERE digest = ? AND model = ? AND task = ? AND variant IS ?
                   AND id = (SELECT id FROM results o WHERE o.digest = r.digest AND o.page = r.page
                             AND o.model = r.model AND o.task = r.task AND o.variant IS r.variant
                             ORDER BY o.created_at DESC, o.id DESC LIMIT 1)
                   ORDER BY page""", (key.digest, key.model, key.task, key.variant)).fetchall()
        return [self._stored(row) for row in rows]

    def correct(self, result_id: int, text: str | None) -> None:
        """Keep the user's edit of a result's text; None (or the recognised text itself) drops every edit,
        so the recognised text stands again. The result itself is never changed."""
        with self.transaction() as con:
            row = con.execute("SELECT text FROM results WHERE id = ?", (result_id,)).fetchone()
            if row is None:
                raise KeyError(f"no stored result {result_id}")
            if text is None or text == row["text"]:
                con.execute("DELETE FROM corrections WHERE result_id = ?", (result_id,))
            else:
                con.execute("INSERT INTO corrections (result_id, text, created_at) VALUES (?, ?, ?)",
                            (result_id, text, time.time()))

    # ---- workspaces ---------------------------------------------------------------------------

    def save_workspace(self, session: str, state: dict) -> None:
        """One browser session's workspace (JSON-able), replacing what that session saved before."""
        with self.transaction() as con:
            con.execute("""INSERT INTO workspaces (session, state, updated_at) VALUES (?, ?, ?)
                           ON CONFLICT(session) DO UPDATE
                           SET state = excluded.state, updated_at = excluded.updated_at""",
                        (session, json.dumps(state, ensure_ascii=False), time.time()))
            con.execute("""DELETE FROM workspaces WHERE session NOT IN
                           (SELECT session FROM workspaces ORDER BY updated_at DESC LIMIT ?)""", (KEPT_WORKSPACES,))

    def last_workspace(self, exclude: str | None = None) -> SavedWorkspace | None:
        """The most recently saved workspace of any session but `exclude`."""
        with self.connect() as con:
            row = con.execute("SELECT * FROM workspaces WHERE session IS NOT ? ORDER BY updated_at DESC LIMIT 1",
                              (exclude,)).fetchone()
        if row is None:
            return None
        return SavedWorkspace(row["session"], json.loads(row["state"]), datetime.fromtimestamp(row["updated_at"], UTC))

    def delete(self, result_ids: Sequence[int]) -> int:
        """Delete these results; returns how many were there. A job keeps its page as done, without result."""
        if not result_ids:
            return 0
        marks = ",".join("?" * len(result_ids))
        with self.transaction() as con:
            deleted = con.execute(f"DELETE FROM results WHERE id IN ({marks})", list(result_ids)).rowcount
        self.collect_files()
        return deleted

    # ---- kept documents ---------------------------------------------------------------------

    def _file_for(self, digest: str, kind: str) -> Path:
        return self.files_dir / digest[:2] / f"{digest}{SUFFIXES.get(kind, '.' + kind)}"

    def keep(self, document: Document, name: str | None = None, pin: bool = False) -> bool:
        """Keep a copy of the source document (once per content); returns whether a copy is kept.
        `pin`: keep it even over the size limit (an unfinished job needs it)."""
        now = time.time()
        with self.connect() as con:
            row = con.execute("SELECT file FROM documents WHERE digest = ?", (document.digest,)).fetchone()
        if row is not None and row["file"] and (self.files_dir / row["file"]).exists():
            with self.transaction() as con:
                con.execute("UPDATE documents SET last_used = ? WHERE digest = ?", (now, document.digest))
            return True
        size = len(document.data)
        stored_file = None
        if pin or size <= self.max_files_bytes:
            target = self._file_for(document.digest, document.kind)
            target.parent.mkdir(parents=True, exist_ok=True)
            # Written aside and renamed: another process keeping the same content never sees half a file.
            with tempfile.NamedTemporaryFile(dir=target.parent, delete=False, suffix=".part") as handle:
                handle.write(document.data)
            os.replace(handle.name, target)
            stored_file = str(target.relative_to(self.files_dir))
        with self.transaction() as con:
            con.execute(
                """INSERT INTO documents (digest, name, kind, page_count, bytes, file, last_used, created_at)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?)
                   ON CONFLICT(digest) DO UPDATE SET file = excluded.file, last_used = excluded.last_used""",
                (document.digest, name or document.name, document.kind, document.page_count, size, stored_file,
                 now, now))
        self.collect_files(keep={document.digest} if pin else set())
        return stored_file is not None

    def _pinned(self, con: sqlite3.Connection) -> set[str]:
        """Documents uploaded to jobs that are not finished: their kept copy is their only source."""
        return {row[0] for row in con.execute(
            """SELECT DISTINCT d.digest FROM job_documents d JOIN jobs j ON j.id = d.job_id
               WHERE d.path IS NULL AND d.digest IS NOT NULL AND j.status != 'done'""")}

    def collect_files(self, keep: set[str] | frozenset[str] = frozenset()) -> None:
        """Drop kept copies, least recently used first, until they fit the size limit; never those of
        unfinished jobs' uploads, nor those in `keep` (pinned for a job about to be written)."""
        with self.connect() as con:
            total = con.execute("SELECT coalesce(sum(bytes), 0) FROM documents WHERE file IS NOT NULL").fetchone()[0]
            if total <= self.max_files_bytes:
                return
            pinned = self._pinned(con) | set(keep)
            candidates = con.execute(
                "SELECT digest, file, bytes FROM documents WHERE file IS NOT NULL ORDER BY last_used").fetchall()
        dropped = []
        for row in candidates:
            if total <= self.max_files_bytes:
                break
            if row["digest"] in pinned:
                continue
            with contextlib.suppress(FileNotFoundError):
                (self.files_dir / row["file"]).unlink()
            dropped.append(row["digest"])
            total -= row["bytes"]
        if dropped:
            with self.transaction() as con:
                con.executemany("UPDATE documents SET file = NULL WHERE digest = ?", [(d,) for d in dropped])

    def kept_document(self, digest: str) -> KeptDocument | None:
        with self.connect() as con:
            row = con.execute("SELECT * FROM documents WHERE digest = ?", (digest,)).fetchone()
        if row is None:
            return None
        return KeptDocument(digest=row["digest"], name=row["name"], kind=row["kind"], page_count=row["page_count"],
                            bytes=row["bytes"], kept=bool(row["file"]) and (self.files_dir / row["file"]).exists())

    def kept_bytes(self) -> int:
        with self.connect() as con:
            return int(con.execute(
                "SELECT coalesce(sum(bytes), 0) FROM documents WHERE file IS NOT NULL").fetchone()[0])

    def open_document(self, digest: str, name: str | None = None, dpi: int | None = None) -> Document | None:
        """The kept source document, validated again; None when no copy is kept."""
        with self.connect() as con:
            row = con.execute("SELECT name, file FROM documents WHERE digest = ?", (digest,)).fetchone()
        if row is None or not row["file"]:
            return None
        try:
            data = (self.files_dir / row["file"]).read_bytes()
        except FileNotFoundError:
            return None
        with self.transaction() as con:
            con.execute("UPDATE documents SET last_used = ? WHERE digest = ?", (time.time(), digest))
        return open_document(name or row["name"], data, self.limits, dpi)

    def page_image(self, stored: StoredResult) -> Image.Image | None:
        """The page as it was recognised (boxes are in its pixels); None when its document is not kept."""
        document = self.open_document(stored.key.digest, stored.document_name, stored.render_dpi)
        if document is None:
            return None
        try:
            image = document.render(stored.key.page).image
        except DocumentError:
            return None
        size = (stored.result.width, stored.result.height)
        if size[0] and size[1] and image.size != size:  # rendered smaller at the time (pixel limit)
            image = image.resize(size)  # type: ignore[arg-type]
        return image
