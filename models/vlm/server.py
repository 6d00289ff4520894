"""A model on an OpenAI-compatible server (vLLM, or a gateway in front of many replicas).

The app does not schedule work across machines: it sends each request to one base URL (a short
list of replicas is taken in turn), keeps at most `concurrency` requests in flight per server in
this process, and retries with exponential backoff when the server is busy or failing (429, 5xx,
timeouts, dropped connections, a stream cut short or garbled). Answers are always streamed, so
tokens reach the caller as they come and a caller that sees a loop can stop the request; closing
the stream makes vLLM abort it.

Uses the official `openai` client library, imported when a client is made: the registry imports
this module for its options on every start.
"""
from __future__ import annotations

import base64
import io
import json
import os
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, field_validator

from models.contract import TokenCallback

if TYPE_CHECKING:
    import openai

# vLLM accepts any key when started without --api-key; the client library insists on one.
NO_KEY = "EMPTY"
MAX_BACKOFF_S = 30.0
HEALTH_TIMEOUT_S = 5.0
RETRY_STATUSES = frozenset({408, 409, 429})  # besides every 5xx


class ServerOptions(BaseModel):
    """Where a model is served and how hard to push it; a registry entry's `server:` block."""

    model_config = ConfigDict(extra="forbid")
    base_url: list[str] = Field(description="the server's /v1 URL; several are taken in turn (replicas without "
                                            "a gateway)")
    served_model_name: str | None = Field(None, description="the name the server lists; default: the entry's "
                                                            "hub_id, which is what `vllm serve <repo>` serves under")
    api_key_env: str | None = Field(None, description="environment variable holding the API key, if the server "
                                                      "wants one")
    timeout_s: float = Field(120, gt=0, description="give up on an attempt after this long without a byte")
    concurrency: int = Field(4, ge=1, le=256, description="requests in flight at once to this server, per process")
    retries: int = Field(3, ge=0, le=20, description="further attempts after a retryable failure")
    backoff_s: float = Field(0.5, ge=0, description="first wait before a retry; doubled each time, with jitter")

    @field_validator("base_url", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("base_url")
    @classmethod
    def _urls(cls, urls: list[str]) -> list[str]:
        if not urls:
            raise ValueError("expected at least one URL")
        bad = [u for u in urls if not u.startswith(("http://", "https://"))]
        if bad:
            raise ValueError("expected http:// or https:// URLs")
        return [u.rstrip("/") for u in urls]


class ServerError(RuntimeError):
    """The server gave no usable answer (after the retries, where retrying made sense)."""


class ServerUnreachable(ServerError):
    """No attempt could even connect: the server (every replica) is down or the URL is wrong."""


class IncompleteAnswer(RuntimeError):
    """A stream that ended without saying why (no finish reason): cut short somewhere on the way."""


@dataclass
class Completion:
    text: str
    pieces: list[str]  # the text as it was streamed: about one token each
    tokens: int  # completion tokens as the server counted them (else streamed pieces)
    finish_reason: str  # "stop", "length", or "stopped" when stop_when ended it
    attempts: int
    url: str


@dataclass(frozen=True)
class ReplicaHealth:
    url: str
    reachable: bool
    model_listed: bool
    latency_s: float | None
    error: str | None = None


@dataclass(frozen=True)
class ServerHealth:
    model: str
    replicas: tuple[ReplicaHealth, ...]

    @property
    def ok(self) -> bool:
        """At least one replica answers and serves the model."""
        return any(r.reachable and r.model_listed for r in self.replicas)

    @property
    def summary(self) -> str:
        """One line for a status display."""
        good = [r for r in self.replicas if r.reachable and r.model_listed]
        if good:
            fastest = min(r.latency_s or 0.0 for r in good)
            replicas = f"{len(good)}/{len(self.replicas)} replicas, " if len(self.replicas) > 1 else ""
            return f"{self.model} served ({replicas}{fastest * 1000:.0f} ms)"
        first = self.replicas[0]
        return f"{first.url}: {first.error}"


def image_data_url(image: Image.Image) -> str:
    """The page as a PNG data URL: lossless, so the server sees exactly the pixels the budget allows.
    Light compression: about 3x faster to encode than the default for some 25% more bytes, and the
    encoding is the app's main cost per page when the server is fast."""
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


# One limit per server for the whole process, whoever holds a client for it.
_limits: dict[tuple[tuple[str, ...], int], threading.BoundedSemaphore] = {}
_limits_lock = threading.Lock()


def _shared_limit(urls: tuple[str, ...], concurrency: int) -> threading.BoundedSemaphore:
    with _limits_lock:
        return _limits.setdefault((urls, concurrency), threading.BoundedSemaphore(concurrency))


def _short(text: str, limit: int = 200) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[:limit - 1] + "…"


def _status_message(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        inner = body.get("error") if isinstance(body.get("error"), dict) else body
        message = inner.get("message") if isinstance(inner, dict) else None
        if message:
            return _short(str(message))
    return _short(exc.message)


class ServerClient:
    """Requests to one served model; safe to share between threads."""

    def __init__(self, options: ServerOptions, served_model: str):
        import openai

        self.options = options
        self.model = served_model
        api_key = NO_KEY
        if options.api_key_env:
            api_key = os.environ.get(options.api_key_env, "")
            if not api_key:
                raise ServerError(f"the environment variable {options.api_key_env} (server.api_key_env) is not set")
        # Retries are ours: they also cover a stream cut short, and move on to the next replica.
        self._clients = [(url, openai.OpenAI(base_url=url, api_key=api_key, timeout=options.timeout_s,
                                             max_retries=0)) for url in options.base_url]
        self._limit = _shared_limit(tuple(options.base_url), options.concurrency)
        self._turn = 0
        self._turn_lock = threading.Lock()
        self._sleep: Callable[[float], None] = time.sleep

    def _next_client(self) -> tuple[str, openai.OpenAI]:
        with self._turn_lock:
            client = self._clients[self._turn % len(self._clients)]
            self._turn += 1
        return client

    def complete(self, messages: list[dict], params: dict[str, Any], *, extra_body: dict[str, Any] | None = None,
                 on_token: TokenCallback | None = None,
                 stop_when: Callable[[list[str]], bool] | None = None) -> Completion:
        """Stream one chat completion. `params` are standard request parameters (max_tokens,
        temperature, ...), `extra_body` the server's own (vLLM: repetition_penalty, top_k, ...).
        `stop_when(pieces)`, called after each streamed piece with this attempt's pieces so far,
        returning True ends the request early. After a retry, on_token gets only what goes beyond
        the text it was already given."""
        import openai

        shown = 0  # characters already handed to on_token, over all attempts
        last: Exception | None = None
        failures: list[Exception] = []
        attempts = self.options.retries + 1
        for attempt in range(1, attempts + 1):
            url, client = self._next_client()
            delay: float | None = None
            try:
                with self._limit:
                    completion = self._stream_once(client, messages, params, extra_body, on_token, stop_when, shown)
                completion.attempts, completion.url = attempt, url
                return completion
            except _Shown as progress:
                shown = progress.shown
                last, delay = progress.cause, self._retry_delay(attempt, progress.cause)
            except openai.APIStatusError as exc:
                if exc.status_code < 500 and exc.status_code not in RETRY_STATUSES:
                    raise ServerError(f"{url}: HTTP {exc.status_code}: {_status_message(exc)}") from None
                last, delay = exc, self._retry_delay(attempt, exc)
            if last is not None:
                failures.append(last)
            if attempt < attempts:
                self._sleep(delay or 0.0)
        where = self.options.base_url[0] if len(self._clients) == 1 else "every replica"
        error = ServerUnreachable if all(_refused(e) for e in failures) else ServerError
        raise error(f"{self.model} at {where}: {_describe(last)} (gave up after {attempts} attempts)")

    def _stream_once(self, client: openai.OpenAI, messages: list[dict], params: dict[str, Any],
                     extra_body: dict[str, Any] | None, on_token: TokenCallback | None,
                     stop_when: Callable[[list[str]], bool] | None, shown: int) -> Completion:
        """One attempt. A retryable failure comes out as _Shown, carrying how much text has been shown."""
        import openai

        text = ""
        pieces: list[str] = []
        usage_tokens: int | None = None
        finish: str | None = None
        stream: Any = None
        try:
            request: dict[str, Any] = {**params, "model": self.model, "messages": messages, "stream": True,
                                       "stream_options": {"include_usage": True}, "extra_body": extra_body}
            stream = client.chat.completions.create(**request)
            for chunk in stream:
                if chunk.usage is not None:
                    usage_tokens = chunk.usage.completion_tokens
                if not chunk.choices:
                    continue
                choice = chunk.choices[0]
                piece = choice.delta.content if choice.delta is not None else None
                if piece:
                    pieces.append(piece)
                    text += piece
                    if on_token is not None and len(text) > shown:
                        on_token(text[shown:])
                        shown = len(text)
                    if stop_when is not None and stop_when(pieces):
                        finish = "stopped"
                        break
                if choice.finish_reason is not None:
                    finish = choice.finish_reason
            if finish is None:
                raise IncompleteAnswer("the answer stream ended without a finish reason (cut short)")
        except openai.APIStatusError:
            raise
        except (openai.APIError, OSError, ValueError, IncompleteAnswer) as exc:
            # APIError: timeouts, refused connections, undecodable answers; OSError / the HTTP
            # library's transport errors: a connection dropped mid-stream; ValueError: bad JSON.
            raise _Shown(shown, exc) from None
        except Exception as exc:
            if _is_transport_error(exc):
                raise _Shown(shown, exc) from None
            raise
        finally:
            if stream is not None:
                stream.close()  # also what tells vLLM to abort a request stopped early
        return Completion(text=text, pieces=pieces, tokens=usage_tokens if usage_tokens is not None else len(pieces),
                          finish_reason=finish, attempts=1, url="")

    def _retry_delay(self, attempt: int, exc: BaseException | None) -> float:
        """Exponential backoff with jitter; a server's Retry-After (seconds) is honoured up to the cap."""
        delay = self.options.backoff_s * 2 ** (attempt - 1) * random.uniform(0.8, 1.2)
        response = getattr(exc, "response", None)
        retry_after = response.headers.get("retry-after") if response is not None else None
        if retry_after:
            try:
                delay = max(delay, float(retry_after))
            except ValueError:  # an HTTP date: rare for model servers; the backoff stands
                pass
        return min(delay, MAX_BACKOFF_S)

    def health(self, timeout_s: float = HEALTH_TIMEOUT_S) -> ServerHealth:
        """Each replica: does it answer GET /v1/models, does it list the model, how fast."""
        import openai

        replicas = []
        for url, client in self._clients:
            started = time.perf_counter()
            try:
                listed = client.with_options(timeout=min(timeout_s, self.options.timeout_s)).models.list()
                names = {m.id for m in listed.data}
            except openai.APIStatusError as exc:
                replicas.append(ReplicaHealth(url, True, False, time.perf_counter() - started,
                                              f"HTTP {exc.status_code}: {_status_message(exc)}"))
                continue
            except Exception as exc:  # whatever goes wrong, the status display gets one line
                reachable = not (isinstance(exc, openai.APIConnectionError) or _is_transport_error(exc))
                replicas.append(ReplicaHealth(url, reachable, False, None, _describe(exc)))
                continue
            latency = time.perf_counter() - started
            error = None if self.model in names else \
                f"does not serve {self.model}; it serves: {', '.join(sorted(names)) or 'nothing'}"
            replicas.append(ReplicaHealth(url, True, self.model in names, latency, error))
        return ServerHealth(self.model, tuple(replicas))

    def close(self) -> None:
        for _, client in self._clients:
            client.close()


class _Shown(Exception):
    """A retryable failure of one attempt, and how much text on_token has been given so far."""

    def __init__(self, shown: int, cause: Exception):
        super().__init__(str(cause))
        self.shown = shown
        self.cause = cause


def _refused(exc: BaseException) -> bool:
    """A failure to connect at all (as opposed to a server that answered badly or too slowly)."""
    cause = exc.__cause__ or exc.__context__
    return any("ConnectError" == cls.__name__ for e in (exc, cause) if e is not None for cls in type(e).__mro__)


def _is_transport_error(exc: BaseException) -> bool:
    """The HTTP library's network errors (a connection dropped, a read timed out) without naming
    the library: the openai client passes them through unwrapped while a stream is read."""
    return any(cls.__name__ in ("TransportError", "StreamError") for cls in type(exc).__mro__)


def _describe(exc: BaseException | None) -> str:
    import openai

    if exc is None:
        return "no answer"
    if isinstance(exc, openai.APITimeoutError) or "Timeout" in type(exc).__name__:
        return "no answer within the timeout"
    if isinstance(exc, openai.APIStatusError):
        return f"HTTP {exc.status_code}: {_status_message(exc)}"
    if isinstance(exc, openai.APIConnectionError):
        cause = exc.__cause__ or exc.__context__
        if cause is not None and "Connect" not in type(cause).__name__:
            return f"the connection dropped ({_short(str(cause)) or type(cause).__name__})"
        return f"cannot connect ({_short(str(cause)) if cause else 'connection error'})"
    if isinstance(exc, json.JSONDecodeError | openai.APIResponseValidationError):
        return f"the answer is not valid JSON ({_short(str(exc))})"
    if isinstance(exc, IncompleteAnswer):
        return str(exc)
    if _is_transport_error(exc):
        return f"the connection dropped ({_short(str(exc)) or type(exc).__name__})"
    return _short(f"{type(exc).__name__}: {exc}")
