"""Batch jobs over HTTP, on the same job engine and results store as `cli.py batch` and the Batch page.

POST /v1/jobs starts a job on uploads (images, PDFs, zips) and answers at once (202); the job runs
on a thread of this process and its pages are stored as they finish, so GET /v1/jobs/{id} shows
progress, /results the pages done so far, /zip the files `cli.py batch` would write. A job that
the server's stop cut short is resumed by POST /v1/jobs/{id}/resume.
"""
from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, HTTPException, Request, UploadFile
from fastapi.responses import Response
from pydantic import BaseModel, Field

from models.contract import TASKS, RunOptions
from utils.documents.export import failed_page_json, page_json
from utils.engine.loader import Loader
from utils.jobs.background import JobThreads
from utils.jobs.engine import create_job, prepare
from utils.jobs.inputs import InputError, Source, expand_upload
from utils.jobs.outputs import OUTPUT_FORMATS, job_zip, parse_formats
from utils.messages import one_line
from utils.store import Job, Store


class JobDocumentJSON(BaseModel):
    position: int
    name: str
    pages: list[int] = Field(description="1-based pages chosen in it")
    error: str | None


class JobJSON(BaseModel):
    id: int
    name: str
    status: str = Field(description="pending, running, done, cancelled or failed")
    error: str | None
    models: list[str]
    task: str
    pages: str | None
    total: int = Field(description="pages x models")
    done: int
    errors: int
    pending: int
    running_here: bool = Field(description="a thread of this server is running it now")
    created_at: datetime
    finished_at: datetime | None
    notes: list[str] = Field(default_factory=list, description="inputs skipped when the job was made")
    documents: list[JobDocumentJSON] = Field(default_factory=list)


def _store(request: Request) -> Store:
    return request.app.state.store


def _threads(request: Request) -> JobThreads:
    return request.app.state.job_threads


def _loader(request: Request) -> Loader:
    return request.app.state.loader


StoreDep = Annotated[Store, Depends(_store)]
ThreadsDep = Annotated[JobThreads, Depends(_threads)]
LoaderDep = Annotated[Loader, Depends(_loader)]


def _job(store: Store, job_id: int) -> Job:
    job = store.jobs.get(job_id)
    if job is None:
        raise HTTPException(404, f"no job {job_id}")
    return job


def _job_json(store: Store, threads: JobThreads, job: Job, notes: list[str] | None = None) -> JobJSON:
    counts = store.jobs.counts(job.id)
    thread = threads.get(job.id)
    documents = [JobDocumentJSON(position=d.position, name=d.name, pages=[p + 1 for p in d.pages], error=d.error)
                 for d in store.jobs.documents(job.id)]
    return JobJSON(id=job.id, name=job.name, status=job.status, error=job.error, models=job.models, task=job.task,
                   pages=job.pages, total=counts.total, done=counts.done, errors=counts.errors,
                   pending=counts.pending, running_here=thread is not None and thread.alive,
                   created_at=job.created_at, finished_at=job.finished_at, notes=notes or [], documents=documents)


def router(dependencies: list[Any]) -> APIRouter:
    api = APIRouter(prefix="/v1/jobs", tags=["jobs"], dependencies=dependencies)

    @api.post("", status_code=202, response_model=JobJSON)
    def start(store: StoreDep, threads: ThreadsDep, loader: LoaderDep,
              files: Annotated[list[UploadFile], File(description="images, PDFs or zips of them")],
              model: Annotated[str, Form(description="a model name, or several separated by commas")],
              task: Annotated[str, Form(description=f"one of {', '.join(TASKS)}")] = "text",
              pages: Annotated[str | None, Form(description='pages of each document, like "1-3,7"')] = None) -> JobJSON:
        """Start a job over the uploads; it runs in the background (poll GET /v1/jobs/{id})."""
        settings = loader.settings
        models = [m.strip() for m in model.split(",") if m.strip()]
        for name in models:
            if name not in settings.models:
                raise HTTPException(400, f"unknown model '{name}'; known: {', '.join(settings.models)}")
            if task not in settings.models[name].tasks:
                raise HTTPException(400, f"{name} does not do '{task}'; it supports: "
                                         f"{', '.join(settings.models[name].tasks)}")
        if not models:
            raise HTTPException(400, "name at least one model")
        max_bytes = int(settings.documents.max_file_mb * 2**20)
        sources: list[Source] = []
        notes: list[str] = []
        for upload in files:
            try:
                found, skipped = expand_upload(upload.filename or "upload", upload.file.read(), max_bytes)
            except InputError as exc:
                notes.append(one_line(exc))
                continue
            sources += found
            notes += skipped
        # Uploads are kept in the store (pinned until the job is done): the only copy after a restart.
        documents = prepare(sources, settings, pages, keep=lambda document, name: store.keep(document, name, pin=True))
        problems = notes + [d.error for d in documents if d.error]
        if all(d.error for d in documents):
            raise HTTPException(400, "; ".join(problems) or "no images or PDFs in the uploads")
        job_id = create_job(store, documents, models, task, RunOptions(), pages)
        threads.start(store, job_id, loader, None)
        return _job_json(store, threads, _job(store, job_id), notes)

    @api.get("/{job_id}", response_model=JobJSON)
    def status(job_id: int, store: StoreDep, threads: ThreadsDep) -> JobJSON:
        return _job_json(store, threads, _job(store, job_id))

    @api.post("/{job_id}/resume", status_code=202, response_model=JobJSON)
    def resume(job_id: int, store: StoreDep, threads: ThreadsDep, loader: LoaderDep) -> JobJSON:
        """Run the pages a stopped (cancelled, failed, interrupted) job has left."""
        job = _job(store, job_id)
        thread = threads.get(job_id)
        if job.active and not (thread is not None and thread.alive):
            raise HTTPException(409, f"job {job_id} is being run right now by {job.owner}")
        threads.start(store, job_id, loader, None)
        return _job_json(store, threads, _job(store, job_id))

    @api.get("/{job_id}/results")
    def results(job_id: int, store: StoreDep) -> dict:
        """Every page finished so far, per document and model, as `cli.py ocr --format json` reports
        pages (a failed page with its error)."""
        job = _job(store, job_id)
        entries: dict[tuple[int, str], dict] = {}
        names = {d.position: d.name for d in store.jobs.documents(job_id)}
        for page in store.jobs.pages(job_id):
            entry = entries.setdefault((page.position, page.model), {
                "file": names[page.position], "model": page.model, "pages": []})
            if page.status == "error":
                entry["pages"].append(failed_page_json(page.page, page.model, job.task, page.error))
            elif page.status == "done" and page.result_id is not None:
                stored = store.get(page.result_id)
                if stored is not None:
                    entry["pages"].append(page_json(stored.result))
        return {"job": job.id, "status": job.status, "documents": list(entries.values())}

    @api.get("/{job_id}/zip", response_class=Response,
             responses={200: {"content": {"application/zip": {}}, "description": "the job's files"}})
    def archive(job_id: int, store: StoreDep, formats: str = ",".join(OUTPUT_FORMATS[:3])) -> Response:
        """The files `cli.py batch --out` writes (per page, combined markdown, summary.csv), zipped."""
        _job(store, job_id)
        try:
            chosen = parse_formats(formats)
        except ValueError as exc:
            raise HTTPException(400, one_line(exc)) from None
        return Response(job_zip(store, job_id, chosen), media_type="application/zip",
                        headers={"Content-Disposition": f'attachment; filename="job_{job_id}.zip"'})

    return api
