"""Batch jobs as rows in the store: a job, its documents, and one row per (model, document, page).

A page is finished by one transaction that inserts its result and flips its row from pending to done,
so a job killed at any point resumes at the pages still pending and never holds a page twice. Two
processes running the same job at once cannot both finish a page: the second transaction finds the
row no longer pending and rolls its result back.
"""
from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from models.contract import PageResult, ResultKey, RunOptions
from utils.documents.reader import Document

if TYPE_CHECKING:
    from utils.store.store import Store

# A running job's owner refreshes its heartbeat this often; a job silent for HEARTBEAT_STALE_S is interrupted.
HEARTBEAT_S = 5.0
HEARTBEAT_STALE_S = 30.0
UNFINISHED = ("pending", "running", "cancelled", "failed")


def owner_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


@dataclass(frozen=True)
class JobDocument:
    position: int
    name: str
    digest: str | None
    path: str | None = None
    member: str | None = None
    page_count: int = 0
    error: str | None = None
    pages: tuple[int, ...] = ()  # 0-based pages to run (only when creating the job)


@dataclass(frozen=True)
class Job:
    id: int
    fingerprint: str
    name: str
    task: str
    models: list[str]
    options: RunOptions
    pages: str | None
    status: str
    error: str | None
    owner: str | None
    heartbeat: float | None
    created_at: datetime
    finished_at: datetime | None

    @property
    def active(self) -> bool:
        """Being run right now by a live process (here or elsewhere)."""
        if self.status != "running" or self.heartbeat is None or time.time() - self.heartbeat > HEARTBEAT_STALE_S:
            return False
        host, _, pid = (self.owner or "").rpartition(":")
        if host == socket.gethostname() and pid.isdigit():
            return _pid_alive(int(pid))  # killed a moment ago: its heartbeat is fresh but it is gone
        return True


@dataclass(frozen=True)
class JobPage:
    model: str
    position: int
    page: int
    status: str  # pending | done | error
    result_id: int | None
    error: str | None
    seconds: float | None
    finished_at: datetime | None


@dataclass(frozen=True)
class JobCounts:
    total: int
    done: int
    errors: int

    @property
    def finished(self) -> int:
        return self.done + self.errors

    @property
    def pending(self) -> int:
        return self.total - self.finished


def _job(row: Any) -> Job:
    return Job(id=row["id"], fingerprint=row["fingerprint"], name=row["name"], task=row["task"],
               models=json.loads(row["models"]), options=RunOptions.model_validate_json(row["options"]),
               pages=row["pages"], status=row["status"], error=row["error"], owner=row["owner"],
               heartbeat=row["heartbeat"], created_at=datetime.fromtimestamp(row["created_at"], UTC),
               finished_at=datetime.fromtimestamp(row["finished_at"], UTC) if row["finished_at"] else None)


def _page(row: Any) -> JobPage:
    return JobPage(model=row["model"], position=row["position"], page=row["page"], status=row["status"],
                   result_id=row["result_id"], error=row["error"], seconds=row["seconds"],
                   finished_at=datetime.fromtimestamp(row["finished_at"], UTC) if row["finished_at"] else None)


class Jobs:
    def __init__(self, store: Store):
        self._store = store

    def create(self, fingerprint: str, name: str, task: str, models: Sequence[str], options: RunOptions,
               pages: str | None, documents: Sequence[JobDocument]) -> int:
        with self._store.transaction() as con:
            job_id = int(con.execute(
                """INSERT INTO jobs (fingerprint, name, task, models, options, pages, status, created_at)
                   VALUES (?, ?, ?, ?, ?, ?, 'pending', ?)""",
                (fingerprint, name, task, json.dumps(list(models)), options.model_dump_json(), pages,
                 time.time())).lastrowid or 0)
            con.executemany(
                """INSERT INTO job_documents (job_id, position, name, digest, path, member, page_count, error)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?)""",
                [(job_id, d.position, d.name, d.digest, d.path, d.member, d.page_count, d.error) for d in documents])
            con.executemany(
                "INSERT INTO job_pages (job_id, model, position, page) VALUES (?, ?, ?, ?)",
                [(job_id, model, d.position, page) for model in models for d in documents if not d.error
                 for page in d.pages])
        return job_id

    def get(self, job_id: int) -> Job | None:
        with self._store.connect() as con:
            row = con.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _job(row) if row else None

    def find(self, fingerprint: str) -> Job | None:
        """The newest job with this fingerprint (the same inputs, models, task and options)."""
        with self._store.connect() as con:
            row = con.execute("SELECT * FROM jobs WHERE fingerprint = ? ORDER BY id DESC LIMIT 1",
                              (fingerprint,)).fetchone()
        return _job(row) if row else None

    def recent(self, limit: int = 50) -> list[Job]:
        with self._store.connect() as con:
            rows = con.execute("SELECT * FROM jobs ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
        return [_job(row) for row in rows]

    def documents(self, job_id: int) -> list[JobDocument]:
        with self._store.connect() as con:
            rows = con.execute("SELECT * FROM job_documents WHERE job_id = ? ORDER BY position", (job_id,)).fetchall()
        return [JobDocument(position=r["position"], name=r["name"], digest=r["digest"], path=r["path"],
                            member=r["member"], page_count=r["page_count"], error=r["error"]) for r in rows]

    def pages(self, job_id: int, *, status: str | None = None, model: str | None = None,
              newest_first: bool = False, limit: int | None = None) -> list[JobPage]:
        clauses: list[str] = ["job_id = ?"]
        params: list[Any] = [job_id]
        if status is not None:
            clauses.append("status = ?")
            params.append(status)
        if model is not None:
            clauses.append("model = ?")
            params.append(model)
        order = "finished_at DESC" if newest_first else "position, page"
        sql = f"SELECT * FROM job_pages WHERE {' AND '.join(clauses)} ORDER BY {order}"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        with self._store.connect() as con:
            return [_page(row) for row in con.execute(sql, params)]

    def counts(self, job_id: int) -> JobCounts:
        with self._store.connect() as con:
            row = con.execute(
                """SELECT count(*), coalesce(sum(status = 'done'), 0), coalesce(sum(status = 'error'), 0)
                   FROM job_pages WHERE job_id = ?""", (job_id,)).fetchone()
        return JobCounts(total=row[0], done=row[1], errors=row[2])

    def start(self, job_id: int) -> None:
        with self._store.transaction() as con:
            con.execute("UPDATE jobs SET status = 'running', error = NULL, owner = ?, heartbeat = ?, "
                        "finished_at = NULL WHERE id = ?", (owner_id(), time.time(), job_id))

    def beat(self, job_id: int) -> None:
        with self._store.transaction() as con:
            con.execute("UPDATE jobs SET heartbeat = ? WHERE id = ? AND owner = ?", (time.time(), job_id, owner_id()))

    def finish(self, job_id: int, status: str, error: str | None = None) -> None:
        with self._store.transaction() as con:
            con.execute("UPDATE jobs SET status = ?, error = ?, heartbeat = NULL, finished_at = ? WHERE id = ?",
                        (status, error, time.time(), job_id))
        if status == "done":
            self._store.collect_files()  # its uploads are no longer pinned

    def finish_page(self, job_id: int, model: str, position: int, page: int, document: Document | None, name: str, *,
                    key: ResultKey, result: PageResult | None, error: str | None, options: RunOptions,
                    events: Sequence[Any] = ()) -> int | None:
        """Record a page's result (or error) and mark it finished, atomically. Returns the result id, or
        None when there is no result or another process finished this page first."""
        if result is not None and document is not None:
            self._store.keep(document, name)
        with self._store.transaction() as con:
            result_id = None
            if result is not None and document is not None:
                result_id = self._store.insert_result(con, key, result, document, name=name, options=options,
                                                      events=events, job_id=job_id)
            updated = con.execute(
                """UPDATE job_pages SET status = ?, result_id = ?, error = ?, seconds = ?, finished_at = ?
                   WHERE job_id = ? AND model = ? AND position = ? AND page = ? AND status = 'pending'""",
                ("done" if result is not None else "error", result_id, error,
                 result.seconds if result is not None else None, time.time(), job_id, model, position, page)).rowcount
            if not updated:
                con.execute("ROLLBACK")
                con.execute("BEGIN")  # the context manager commits an empty transaction
                return None
            con.execute("UPDATE jobs SET heartbeat = ? WHERE id = ?", (time.time(), job_id))
        return result_id

    def delete(self, job_id: int, with_results: bool = False) -> None:
        with self._store.transaction() as con:
            if with_results:
                con.execute("DELETE FROM results WHERE job_id = ?", (job_id,))
            con.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
        self._store.collect_files()
