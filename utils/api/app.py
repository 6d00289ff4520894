"""The HTTP API: OCR for other programs, on the same loader and page runner as the UI and the CLI.

GET /health, GET /v1/models, POST /v1/ocr, batch jobs under /v1/jobs (utils/api/jobs.py); OpenAPI
docs at /docs. When an API key is configured
(the OCR_API_KEY environment variable; `cli.py serve` insists on one off the loopback interface),
every /v1 route wants it as `Authorization: Bearer <key>` or `X-API-Key: <key>`. Every error is
one line in `{"detail": ...}`, never a traceback.
"""
from __future__ import annotations

import hmac
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import Depends, FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from models.contract import TASKS, Block, RunOptions
from utils.api import jobs
from utils.api.limits import FORM_OVERHEAD, UploadLimit
from utils.config import Settings, cached_settings
from utils.documents.export import failed_page_json, page_json
from utils.documents.reader import Document, DocumentError, open_document
from utils.engine.loader import Loader, ModelStatus, ModelUnavailable
from utils.engine.runner import run_pages
from utils.jobs.background import JobThreads
from utils.messages import one_line
from utils.store import Store

API_KEY_ENV = "OCR_API_KEY"
MB = 1024 * 1024
JOB_STOP_WAIT_S = 30  # at shutdown, for the pages in hand to finish and be stored


# ---- response schemas (what /docs shows) ------------------------------------------------------

class PageJSON(BaseModel):
    """A page's result; a page that failed has only page, model, task and error (the rest null)."""

    page: int = Field(description="1-based page number")
    model: str
    task: str
    text: str | None
    markdown: str | None
    blocks: list[Block] | None = Field(description="regions with boxes in the original page's pixels")
    raw: str | None = Field(description="a VLM's own output before parsing (empty for classic engines)")
    device: str | None
    dtype: str | None
    profile: str | None
    seconds: float | None
    load_seconds: float | None
    tokens: int | None
    truncated: bool | None
    warnings: list[str] | None
    error: str | None = Field(description="why this page has no result, in one line")


class DocumentJSON(BaseModel):
    file: str
    error: str | None = Field(description="why the document could not be read (the API answers 4xx instead)")
    pages: list[PageJSON]


class OcrResponse(BaseModel):
    """The same object as `cli.py ocr --format json`, for the one uploaded document."""

    documents: list[DocumentJSON]
    recovery_events: list[dict[str, Any]] = Field(description="the guard's recoveries during this request")


class ReplicaJSON(BaseModel):
    url: str
    reachable: bool
    model_listed: bool
    latency_ms: float | None
    error: str | None


class ServerJSON(BaseModel):
    ok: bool = Field(description="a replica answers and serves the model")
    summary: str
    replicas: list[ReplicaJSON]


class ModelJSON(BaseModel):
    name: str
    label: str
    tasks: list[str]
    default: bool
    available: bool
    status: str
    reason: str
    fix: str | None
    backend: str = Field(description="local: runs in this app's worker; openai: on an OpenAI-compatible server")
    server: ServerJSON | None = Field(None, description="for backend openai: the server's health (cached 15 s)")


class ModelsResponse(BaseModel):
    models: list[ModelJSON]


class Health(BaseModel):
    status: str


class Problem(BaseModel):
    detail: str


ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": Problem} for code in (400, 401, 413, 422, 503)}


def current_loader(request: Request) -> Loader:
    return request.app.state.loader


LoaderDep = Annotated[Loader, Depends(current_loader)]


# ---- the app ----------------------------------------------------------------------------------

def create_app(settings: Settings | None = None, loader: Loader | None = None, api_key: str | None = None,
               store: Store | None = None) -> FastAPI:
    """`loader`: one to use (its owner closes it); by default the app makes one at start-up and
    closes it at shutdown. `api_key`: required on /v1 routes when given. `store`: the results store
    batch jobs use (default: store.path in config.yaml, opened at start-up)."""
    settings = settings or (loader.settings if loader is not None else cached_settings())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.loader = loader or Loader(settings)
        app.state.store = store or Store.from_settings(settings)
        app.state.job_threads = JobThreads()
        try:
            yield
        finally:
            for thread in app.state.job_threads.values():  # each finishes the page in hand; the rest stays pending
                thread.stop.set()
            for thread in app.state.job_threads.values():
                thread.join(JOB_STOP_WAIT_S)
            if loader is None:
                app.state.loader.close()

    app = FastAPI(title="ChatVLMLLM OCR API", version="1", lifespan=lifespan,
                  description="Document OCR with classic engines and vision-language models.")
    limit_mb, job_mb = settings.documents.max_file_mb, max(settings.documents.max_file_mb, settings.store.max_files_mb)
    # A job's uploads together may be as large as what the store keeps of them; one document as one file.
    app.add_middleware(UploadLimit, max_bytes=int(limit_mb * MB) + FORM_OVERHEAD, limit_text=f"{limit_mb:g} MB",
                       wider={"/v1/jobs": (int(job_mb * MB) + FORM_OVERHEAD, f"{job_mb:g} MB")})
    _one_line_errors(app)

    def authorised(request: Request) -> None:
        if api_key is None:
            return
        given = request.headers.get("x-api-key")
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if given is None and scheme.lower() == "bearer":
            given = token.strip()
        if given is None or not hmac.compare_digest(given.encode(), api_key.encode()):
            raise HTTPException(401, f"missing or wrong API key (send it as 'Authorization: Bearer <key>'; "
                                     f"the server reads it from {API_KEY_ENV})",
                                headers={"WWW-Authenticate": "Bearer"})

    secured = [Depends(authorised)]

    def chosen_model(loader: Loader, model: str | None) -> str:
        """The model asked for, else the default; a 503 / 400 in one line when there is none or it is unknown."""
        model = model or loader.default_model()
        if model is None:
            raise HTTPException(503, "no model is available; GET /v1/models says why")
        if model not in loader.settings.models:
            raise HTTPException(400, f"unknown model '{model}'; known: {', '.join(loader.settings.models)}")
        return model

    def uploaded_document(loader: Loader, file: UploadFile) -> Document:
        """The upload as a document; 413 when it is over the size limit, else 400, in one line."""
        data = file.file.read()
        try:
            return open_document(file.filename or "upload", data, loader.settings.documents)
        except DocumentError as exc:
            raise HTTPException(413 if len(data) > limit_mb * MB else 400, one_line(exc)) from None

    @app.get("/health", response_model=Health, tags=["status"])
    def health(loader: LoaderDep) -> Health:
        """The API is up and its loader is open (needs no key)."""
        return Health(status="ok" if loader.healthy() else "closed")

    @app.get("/v1/models", response_model=ModelsResponse, dependencies=secured, tags=["models"])
    def models(loader: LoaderDep) -> ModelsResponse:
        """Every configured model with its availability and, when it is not available, how to fix that."""
        default = loader.default_model()
        return ModelsResponse(models=[
            ModelJSON(name=s.name, label=s.label, tasks=list(s.tasks), default=s.name == default,
                      available=s.availability.available, status=s.availability.status,
                      reason=s.availability.reason, fix=s.availability.fix,
                      backend=loader.settings.models[s.name].backend, server=_server_json(loader, s))
            for s in loader.catalog()])

    @app.post("/v1/ocr", response_model=OcrResponse, responses=ERRORS, dependencies=secured, tags=["ocr"])
    def ocr(loader: LoaderDep,
            file: Annotated[UploadFile, File(description="an image (PNG, JPEG, TIFF, WebP, BMP, GIF) or a PDF")],
            model: Annotated[str | None, Form(description="a name from /v1/models; default: the default model")] = None,
            task: Annotated[str, Form(description=f"one of {', '.join(TASKS)}")] = "text",
            pages: Annotated[str | None, Form(description='pages like "1-3,7"; default: all')] = None,
            prompt: Annotated[str | None, Form(description="the question, for task 'prompt'")] = None,
            languages: Annotated[str | None, Form(description='an OCR engine\'s languages for this document, like '
                                                   '"eng" or "rus+eng" (Tesseract); default: the configured ones, '
                                                   'checked per page')] = None) -> dict:
        """Recognise one document: the same JSON as `cli.py ocr --format json`. A page that fails has
        its one-line reason in its `error`; the other pages still have results."""
        model = chosen_model(loader, model)
        spec = loader.settings.models[model]
        if task not in spec.tasks:
            raise HTTPException(400, f"{model} does not do '{task}'; it supports: {', '.join(spec.tasks)}")
        if task == "prompt" and not (prompt and prompt.strip()):
            raise HTTPException(400, "task 'prompt' needs a non-empty 'prompt' field")
        try:
            loader.check_languages(model, languages)
        except ValueError as exc:
            raise HTTPException(400, f"languages: {exc}") from None
        document = uploaded_document(loader, file)
        try:
            selection = document.select(pages)
        except DocumentError as exc:
            raise HTTPException(400, one_line(exc)) from None
        since = datetime.now(UTC)
        options = RunOptions(prompt=prompt if task == "prompt" else None, languages=languages or None)
        found = []
        try:
            for outcome in run_pages(loader, document, selection.indices, model, task, options,
                                     warnings=selection.warnings):
                found.append(page_json(outcome.result) if outcome.result is not None else
                             failed_page_json(outcome.page, model, task, outcome.error))
        except ModelUnavailable as exc:
            raise HTTPException(503, one_line(exc)) from None
        events = [e.model_dump(mode="json") for e in loader.recovery_events() if e.time >= since]
        return {"documents": [{"file": document.name, "error": None, "pages": found}], "recovery_events": events}

    @app.post("/v1/extract", responses=ERRORS, dependencies=secured, tags=["extract"])
    def extract(loader: LoaderDep,
                file: Annotated[UploadFile, File(description="an image or a PDF")],
                template: Annotated[str, Form(description="invoice, receipt, passport, driver_licence, ...")],
                model: Annotated[str | None, Form(description="a name from /v1/models")] = None,
                pages: Annotated[str | None, Form(description='pages like "1-3"; default: all')] = None) -> dict:
        """A template's fields from one document: the same object as one document of `cli.py extract
        --format json` (`fields`, `sources`, `problems`, `error`)."""
        from utils.extraction.extract import extract_document
        from utils.extraction.templates import TemplateError, resolve_template

        model = chosen_model(loader, model)
        if "/" in template or template.endswith((".yaml", ".yml")):
            raise HTTPException(400, "template: give a template name, not a file")
        try:
            chosen = resolve_template(template, known_models=loader.settings.models)
        except TemplateError as exc:
            raise HTTPException(400, f"template: {one_line(exc)}") from None
        document = uploaded_document(loader, file)
        try:
            selection = document.select(pages)
        except DocumentError as exc:
            raise HTTPException(400, one_line(exc)) from None
        try:
            extraction = extract_document(loader, document, chosen, model, selection.indices)
        except ModelUnavailable as exc:
            raise HTTPException(503, one_line(exc)) from None
        except ValueError as exc:
            raise HTTPException(400, one_line(exc)) from None
        return extraction.to_json()

    app.include_router(jobs.router(secured))
    return app


def _server_json(loader: Loader, status: ModelStatus) -> ServerJSON | None:
    if loader.settings.models[status.name].backend != "openai" or not status.availability.available:
        return None
    try:
        health = loader.server_health(status.name)
    except ModelUnavailable as exc:
        return ServerJSON(ok=False, summary=one_line(exc), replicas=[])
    if health is None:
        return None
    return ServerJSON(ok=health.ok, summary=health.summary, replicas=[
        ReplicaJSON(url=r.url, reachable=r.reachable, model_listed=r.model_listed, error=r.error,
                    latency_ms=None if r.latency_s is None else round(r.latency_s * 1000, 1))
        for r in health.replicas])


def _one_line_errors(app: FastAPI) -> None:
    """Every error as `{"detail": "<one line>"}`: FastAPI's own validation errors are lists, and an
    unexpected exception would otherwise be a bare 500."""

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else one_line(Exception(str(exc.detail)))
        return JSONResponse({"detail": detail}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for error in exc.errors():
            where = ".".join(str(p) for p in error.get("loc", ()) if p not in ("body", "query", "header"))
            parts.append(f"{where}: {error.get('msg', 'invalid')}" if where else str(error.get("msg", "invalid")))
        return JSONResponse({"detail": "; ".join(parts) or "invalid request"}, status_code=422)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": f"internal error: {one_line(exc)}"}, status_code=500)
