"""The store's schema, versioned: PRAGMA user_version is the number of migrations applied.

A migration is a list of statements, applied once, in order, inside one write transaction, so two
processes opening a new database at the same time cannot both apply it. Never edit a released
migration: append a new one.
"""
from __future__ import annotations

import sqlite3
from collections.abc import Callable

V1 = [
    # Source documents, by content hash; `file` is set while a copy is kept in the files folder.
    """CREATE TABLE documents (
        digest TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        kind TEXT NOT NULL,
        page_count INTEGER NOT NULL,
        bytes INTEGER NOT NULL,
        file TEXT,
        last_used REAL NOT NULL,
        created_at REAL NOT NULL)""",
    # One row per recognised page, never updated; `result` is the whole PageResult as JSON.
    """CREATE TABLE results (
        id INTEGER PRIMARY KEY,
        digest TEXT NOT NULL,
        page INTEGER NOT NULL,
        model TEXT NOT NULL,
        task TEXT NOT NULL,
        variant TEXT,
        document_name TEXT NOT NULL,
        document_kind TEXT,
        render_dpi INTEGER,
        options TEXT NOT NULL,
        profile TEXT NOT NULL,
        device TEXT NOT NULL,
        text TEXT NOT NULL,
        markdown TEXT NOT NULL,
        seconds REAL,
        load_seconds REAL,
        tokens INTEGER,
        truncated INTEGER NOT NULL DEFAULT 0,
        result TEXT NOT NULL,
        events TEXT NOT NULL DEFAULT '[]',
        job_id INTEGER,
        created_at REAL NOT NULL)""",
    "CREATE INDEX results_created ON results(created_at DESC, id DESC)",
    "CREATE INDEX results_key ON results(digest, page, model, task)",
    "CREATE INDEX results_document ON results(document_name)",
    "CREATE INDEX results_job ON results(job_id)",
    """CREATE TABLE jobs (
        id INTEGER PRIMARY KEY,
        fingerprint TEXT NOT NULL,
        name TEXT NOT NULL,
        task TEXT NOT NULL,
        models TEXT NOT NULL,
        options TEXT NOT NULL,
        pages TEXT,
        status TEXT NOT NULL,
        error TEXT,
        owner TEXT,
        heartbeat REAL,
        created_at REAL NOT NULL,
        finished_at REAL)""",
    "CREATE INDEX jobs_fingerprint ON jobs(fingerprint)",
    # `path` (and `member` inside a zip) is where the command line read the document; uploads have
    # none and are read back from the kept copy, which stays while the job is unfinished.
    """CREATE TABLE job_documents (
        job_id INTEGER NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
        position INTEGER NOT NULL,
        name TEXT NOT NULL,
        digest TEXT,
        path TEXT,
        member TEXT,
        page_count INTEGER NOT NULL DEFAULT 0,
        error TEXT,
        PRIMARY KEY (job_id, position))""",
    "CREATE INDEX job_documents_digest ON job_documents(digest)",
    # A job page is pending until its result (or its error) is written in the same transaction.
    """CREATE TABLE job_pages (
        job_id INTEGER NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
        model TEXT NOT NULL,
        position INTEGER NOT NULL,
        page INTEGER NOT NULL,
        status TEXT NOT NULL DEFAULT 'pending',
        result_id INTEGER REFERENCES results(id) ON DELETE SET NULL,
        error TEXT,
        seconds REAL,
        finished_at REAL,
        PRIMARY KEY (job_id, model, position, page))""",
    "CREATE INDEX job_pages_status ON job_pages(job_id, status)",
]

# Full-text search over the recognised text, where this SQLite has FTS5 (the search falls back to LIKE).
# The tokenizer folds case in every script and Latin accents; ё/Ё are indexed as е/Е (Russian writers
# mostly type е), the search words get the same treatment.
_YO = "replace(replace({}, 'ё', 'е'), 'Ё', 'Е')"
V1_SEARCH = [
    """CREATE VIRTUAL TABLE results_fts USING fts5(text, markdown, document_name, content='results',
        content_rowid='id', tokenize='unicode61 remove_diacritics 2')""",
    f"""CREATE TRIGGER results_fts_insert AFTER INSERT ON results BEGIN
        INSERT INTO results_fts(rowid, text, markdown, document_name)
        VALUES (new.id, {_YO.format('new.text')}, {_YO.format('new.markdown')}, new.document_name); END""",
    f"""CREATE TRIGGER results_fts_delete AFTER DELETE ON results BEGIN
        INSERT INTO results_fts(results_fts, rowid, text, markdown, document_name)
        VALUES ('delete', old.id, {_YO.format('old.text')}, {_YO.format('old.markdown')}, old.document_name); END""",
]


def _v1(con: sqlite3.Connection) -> None:
    for statement in V1:
        con.execute(statement)
    if fts5_available(con):
        for statement in V1_SEARCH:
            con.execute(statement)


# Conversations about documents (the Chat page, `cli.py chat`); `turns` is the list of turns as JSON,
# rewritten after each answer, so a chat is continued by reading it and saving it back.
V2 = [
    """CREATE TABLE chats (
        id INTEGER PRIMARY KEY,
        model TEXT NOT NULL,
        digest TEXT NOT NULL,
        document_name TEXT NOT NULL,
        pages TEXT NOT NULL,
        image_pages TEXT NOT NULL,
        context_model TEXT,
        context TEXT NOT NULL DEFAULT '',
        max_pixels INTEGER,
        turns TEXT NOT NULL DEFAULT '[]',
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL)""",
    "CREATE INDEX chats_updated ON chats(updated_at DESC, id DESC)",
]


# A user's edit of a recognised text, kept beside the result (never changing it): the newest one counts,
# none means the recognised text stands. A workspace is one browser session's documents, selections and
# results (ids into `results`), so that a refresh or a server restart can bring it back.
V3 = [
    """CREATE TABLE corrections (
        id INTEGER PRIMARY KEY,
        result_id INTEGER NOT NULL REFERENCES results(id) ON DELETE CASCADE,
        text TEXT NOT NULL,
        created_at REAL NOT NULL)""",
    "CREATE INDEX corrections_result ON corrections(result_id, created_at DESC, id DESC)",
    """CREATE TABLE workspaces (
        session TEXT PRIMARY KEY,
        state TEXT NOT NULL,
        updated_at REAL NOT NULL)""",
    "CREATE INDEX workspaces_updated ON workspaces(updated_at DESC)",
]


# A template's fields read from a document (the Extract page), kept as the engine gave them, and a
# person's value of one field beside it (JSON; the newest per field counts), as with text corrections.
V4 = [
    """CREATE TABLE extractions (
        id INTEGER PRIMARY KEY,
        digest TEXT NOT NULL,
        document_name TEXT NOT NULL,
        template TEXT NOT NULL,
        model TEXT NOT NULL,
        extraction TEXT NOT NULL,
        created_at REAL NOT NULL)""",
    "CREATE INDEX extractions_key ON extractions(digest, template, model, created_at DESC, id DESC)",
    """CREATE TABLE field_corrections (
        id INTEGER PRIMARY KEY,
        extraction_id INTEGER NOT NULL REFERENCES extractions(id) ON DELETE CASCADE,
        field TEXT NOT NULL,
        value TEXT NOT NULL,
        created_at REAL NOT NULL)""",
    "CREATE INDEX field_corrections_extraction ON field_corrections(extraction_id, created_at, id)",
]


def _statements(statements: list[str]) -> Callable[[sqlite3.Connection], None]:
    """A migration that is only these statements, in order."""
    def apply(con: sqlite3.Connection) -> None:
        for statement in statements:
            con.execute(statement)
    return apply


MIGRATIONS = (_v1, _statements(V2), _statements(V3), _statements(V4))
VERSION = len(MIGRATIONS)


class SchemaError(RuntimeError):
    """The database cannot be used by this version of the app."""


def fts5_available(con: sqlite3.Connection) -> bool:
    try:
        con.execute("CREATE VIRTUAL TABLE temp.fts5_probe USING fts5(x)")
    except sqlite3.OperationalError:
        return False
    con.execute("DROP TABLE temp.fts5_probe")
    return True


def migrate(con: sqlite3.Connection, path: str) -> int:
    """Bring the database up to VERSION; returns the version found before. `con` is in autocommit mode."""
    con.execute("BEGIN IMMEDIATE")
    try:
        found = con.execute("PRAGMA user_version").fetchone()[0]
        if found > VERSION:
            raise SchemaError(f"{path}: written by a newer version of the app (schema {found}; this one knows "
                              f"up to {VERSION}); upgrade the app or set store.path to another file")
        for migration in MIGRATIONS[found:]:
            migration(con)
        if found < VERSION:
            con.execute(f"PRAGMA user_version = {VERSION}")
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    return found
