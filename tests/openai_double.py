"""A test double of vLLM's OpenAI-compatible protocol: a real HTTP server on 127.0.0.1.

It implements the two endpoints the app uses, `GET /v1/models` and `POST /v1/chat/completions`
(plain JSON and server-sent events with chunked transfer encoding, as vLLM answers), and lets a
test decide how it behaves: the answer, a delay per request and per streamed piece, and faults
(429, 500, a stall, a disconnect in the middle of a stream, malformed JSON). A request whose shape
vLLM would refuse (see request_problem) gets vLLM's 400, so tests fail on what a real server
rejects. Every chat request is recorded with its body, headers and timing, and the largest number
of requests in flight at once is kept, so tests can check parameters, image data URLs and
concurrency limits. Run as a script
it is a server process of its own (see main), as the benchmark uses it.

The `openai_double` fixture is registered in tests/conftest.py.
"""
from __future__ import annotations

import argparse
import base64
import io
import json
import re
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

FAULTS = ("429", "500", "slow", "disconnect", "malformed")
ROLES = ("system", "developer", "user", "assistant")
STATS_PATH = "/_double/stats"
# One "token" of the double: a word with the blanks after it (or a run of blanks), so the pieces
# joined give the answer back exactly.
PIECE = re.compile(r"\S+\s*|\s+")


@dataclass
class ChatRequest:
    """One POST /v1/chat/completions as the double received it."""

    body: dict
    headers: dict[str, str]  # names in lower case
    started: float
    ended: float | None = None
    fault: str | None = None

    @property
    def image_urls(self) -> list[str]:
        return [part["image_url"]["url"] for message in self.body.get("messages", [])
                if isinstance(message.get("content"), list)
                for part in message["content"] if part.get("type") == "image_url"]

    @property
    def prompt_text(self) -> str:
        return "\n".join(text for _, text in self.turns)

    @property
    def turns(self) -> list[tuple[str, str]]:
        """(role, text) of each message, its text parts joined; images left out."""
        return [(message.get("role"), message["content"] if isinstance(message.get("content"), str) else
                 "\n".join(part["text"] for part in message.get("content") or [] if part.get("type") == "text"))
                for message in self.body.get("messages", [])]


@dataclass
class OpenAIDouble:
    """Set the public attributes from a test; they are read at each request."""

    models: list[str] = field(default_factory=lambda: ["served-model"])
    answer: str | Callable[[dict], str] = "Hello from the double."
    delay_s: float = 0.0  # before the first byte of each chat answer
    piece_delay_s: float = 0.0  # between streamed pieces
    slow_s: float = 30.0  # how long a "slow" fault stalls before answering
    retry_after: str | None = None  # Retry-After header of a 429
    image_limit: int | None = None  # vLLM's --limit-mm-per-prompt.image (unset there: 999)
    api_key: str | None = None  # when set, requests must carry `Authorization: Bearer <key>`
    # Faults for the next chat requests, one each, in order; an empty queue answers normally.
    faults: deque[str] = field(default_factory=deque)
    models_faults: deque[str] = field(default_factory=deque)  # the same for GET /v1/models
    requests: list[ChatRequest] = field(default_factory=list)
    models_requests: int = 0
    max_in_flight: int = 0

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._in_flight = 0
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ---- life cycle ---------------------------------------------------------------------------

    def start(self) -> OpenAIDouble:
        double = self

        class Handler(_Handler):
            owner = double

        self._server = _Server(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # wakes stalled handlers
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)

    @property
    def port(self) -> int:
        assert self._server is not None, "start() first"
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        """The base URL an OpenAI client is given."""
        return f"http://127.0.0.1:{self.port}/v1"

    def fail_next(self, *faults: str) -> None:
        unknown = [f for f in faults if f not in FAULTS]
        if unknown:
            raise ValueError(f"unknown faults {unknown}; expected some of {FAULTS}")
        self.faults.extend(faults)

    # ---- used by the handler ------------------------------------------------------------------

    def _take(self, queue: deque[str]) -> str | None:
        with self._lock:
            return queue.popleft() if queue else None

    def _enter(self, request: ChatRequest) -> None:
        with self._lock:
            self.requests.append(request)
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)

    def _leave(self, request: ChatRequest) -> None:
        with self._lock:
            self._in_flight -= 1
            request.ended = time.monotonic()

    def stats(self, reset: bool = False) -> dict[str, int]:
        """Chat requests received and the most in flight at once (then zeroed, when reset)."""
        with self._lock:
            stats = {"requests": len(self.requests), "max_in_flight": self.max_in_flight}
            if reset:
                self.requests.clear()
                self.max_in_flight = 0
        return stats

    def _sleep(self, seconds: float) -> None:
        if seconds > 0:
            self._stopping.wait(seconds)

    def _answer_for(self, body: dict) -> str:
        return self.answer(body) if callable(self.answer) else self.answer


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # a stalled handler must not hold up stop()

    def handle_error(self, request, client_address) -> None:
        # A client that gave up (timeout, stopped stream) leaves a handler writing into a closed
        # socket: expected here. Anything else is a bug in the double and is printed.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def request_problem(body: dict, image_limit: int | None = None) -> str | None:
    """What vLLM's chat endpoint would refuse in this request body (a 400), or None. The shapes its
    request model accepts for what the app sends: messages of a known role whose content is a string
    or a list of parts, a part being {"type": "text", "text": str} or {"type": "image_url",
    "image_url": {"url": str}}, images only in user messages; data URLs must hold a decodable image."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages: expected a non-empty list"
    images = 0
    for number, message in enumerate(messages):
        where = f"messages[{number}]"
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            return f"{where}: expected an object with a role of {', '.join(ROLES)}"
        content = message.get("content")
        if isinstance(content, str):
            continue
        if not isinstance(content, list) or not content:
            return f"{where}.content: expected a string or a non-empty list of parts"
        for index, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text":
                if not isinstance(part.get("text"), str):
                    return f"{where}.content[{index}].text: expected a string"
            elif kind == "image_url":
                if message["role"] != "user":
                    return f"{where}: images go in user messages, not in {message['role']} ones"
                url = part.get("image_url")
                url = url.get("url") if isinstance(url, dict) else None
                problem = _image_problem(url)
                if problem:
                    return f"{where}.content[{index}].image_url: {problem}"
                images += 1
            else:
                return f"{where}.content[{index}]: unknown part type {kind!r}"
    if image_limit is not None and images > image_limit:
        return (f"At most {image_limit} image(s) may be provided in one prompt. "
                "Set `--limit-mm-per-prompt` to increase this limit.")  # vLLM's words
    if body.get("stream_options") is not None and not body.get("stream"):
        return "Stream options can only be defined when `stream=True`."  # vLLM's words
    cap = body.get("max_completion_tokens", body.get("max_tokens"))
    if cap is not None and (not isinstance(cap, int) or cap < 1):
        return "max_completion_tokens: expected a positive integer"
    return None


def _image_problem(url: object) -> str | None:
    if not isinstance(url, str):
        return "expected {\"url\": <string>}"
    if url.startswith(("http://", "https://")):
        return "the double does not fetch URLs; the app sends data URLs"
    header, comma, data = url.partition(",")
    if not (header.startswith("data:image/") and header.endswith(";base64") and comma):
        return "expected a data:image/...;base64, URL"
    try:
        Image.open(io.BytesIO(base64.b64decode(data, validate=True))).verify()
    except Exception as exc:  # whatever PIL or base64 finds wrong, vLLM fails to load it too
        return f"the image cannot be loaded ({type(exc).__name__})"
    return None


def _pieces(text: str, cap: int | None) -> tuple[list[str], str]:
    pieces = PIECE.findall(text)
    if cap is not None and len(pieces) > cap:
        return pieces[:cap], "length"
    return pieces, "stop"


class _Handler(BaseHTTPRequestHandler):
    owner: OpenAIDouble
    protocol_version = "HTTP/1.1"  # chunked streams, so a cut-off stream is a protocol error

    def log_message(self, format, *args) -> None:  # noqa: A002 - quiet test output
        pass

    # ---- plumbing -----------------------------------------------------------------------------

    def _send_json(self, status: int, payload: object, headers: dict[str, str] | None = None) -> None:
        self._send_raw(status, json.dumps(payload).encode(), headers)

    def _send_raw(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: int, message: str, kind: str, headers: dict[str, str] | None = None) -> None:
        # vLLM's error body
        self._send_json(status, {"object": "error", "message": message, "type": kind, "param": None,
                                 "code": status}, headers)

    def _authorised(self) -> bool:
        key = self.owner.api_key
        if key is None or self.headers.get("Authorization") == f"Bearer {key}":
            return True
        self._error(401, "Unauthorized", "AuthenticationError")
        return False

    def _write_chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):X}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _event(self, payload: object | str) -> None:
        text = payload if isinstance(payload, str) else json.dumps(payload)
        self._write_chunk(f"data: {text}\n\n".encode())

    def _cut_connection(self) -> None:
        """Close the socket in the middle of a response: no final chunk, no [DONE]."""
        self.wfile.flush()
        self.close_connection = True
        self.connection.close()

    # ---- endpoints ----------------------------------------------------------------------------

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        if self.path.startswith(STATS_PATH):  # the double's own route, for a double in another process
            self._send_json(200, self.owner.stats(reset="reset" in self.path))
            return
        if self.path.rstrip("/") != "/v1/models":
            self._error(404, f"no route {self.path}", "NotFoundError")
            return
        owner = self.owner
        with owner._lock:
            owner.models_requests += 1
        fault = owner._take(owner.models_faults)
        if not self._authorised():
            return
        if fault == "slow":
            owner._sleep(owner.slow_s)
        if fault in ("500", "429"):
            self._error(int(fault), "injected failure", "InternalServerError")
        elif fault == "malformed":
            self._send_raw(200, b'{"object": "list", "data": [')
        elif fault == "disconnect":
            self._cut_connection()
        else:
            data = [{"id": name, "object": "model", "created": 0, "owned_by": "vllm", "root": name,
                     "max_model_len": 32768} for name in owner.models]
            self._send_json(200, {"object": "list", "data": data})

    def do_POST(self) -> None:  # noqa: N802
        if self.path.rstrip("/") != "/v1/chat/completions":
            self._error(404, f"no route {self.path}", "NotFoundError")
            return
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        owner = self.owner
        try:
            body = json.loads(raw)
        except json.JSONDecodeError:
            self._error(400, "request body is not JSON", "BadRequestError")
            return
        headers = {name.lower(): value for name, value in self.headers.items()}
        request = ChatRequest(body=body, headers=headers, started=time.monotonic())
        request.fault = owner._take(owner.faults)
        owner._enter(request)
        try:
            self._chat(body, request.fault)
        finally:
            owner._leave(request)

    def _chat(self, body: dict, fault: str | None) -> None:
        owner = self.owner
        if not self._authorised():
            return
        if body.get("model") not in owner.models:
            self._error(404, f"The model `{body.get('model')}` does not exist.", "NotFoundError")
            return
        problem = request_problem(body, owner.image_limit)
        if problem is not None:
            self._error(400, problem, "BadRequestError")
            return
        owner._sleep(owner.slow_s if fault == "slow" else owner.delay_s)
        if fault == "429":
            headers = {"Retry-After": owner.retry_after} if owner.retry_after is not None else None
            self._error(429, "Too many requests", "RateLimitError", headers)
            return
        if fault == "500":
            self._error(500, "injected failure", "InternalServerError")
            return
        cap = body.get("max_completion_tokens") or body.get("max_tokens")
        pieces, finish = _pieces(owner._answer_for(body), cap)
        if body.get("stream"):
            self._stream(body, pieces, finish, fault)
            return
        if fault == "malformed":
            self._send_raw(200, b'{"id": "chatcmpl-double", "choices": [{"message": ')
            return
        if fault == "disconnect":
            self._cut_connection()
            return
        self._send_json(200, {
            "id": "chatcmpl-double", "object": "chat.completion", "created": int(time.time()),
            "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(pieces)},
                         "finish_reason": finish}],
            "usage": {"prompt_tokens": 1, "completion_tokens": len(pieces), "total_tokens": 1 + len(pieces)},
        })

    def _stream(self, body: dict, pieces: list[str], finish: str, fault: str | None) -> None:
        owner = self.owner
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

        def chunk(delta: dict, finish_reason: str | None = None) -> dict:
            return {"id": "chatcmpl-double", "object": "chat.completion.chunk", "created": int(time.time()),
                    "model": body["model"], "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]}

        self._event(chunk({"role": "assistant", "content": ""}))
        cut_at = max(1, len(pieces) // 2)
        for number, piece in enumerate(pieces):
            if fault in ("disconnect", "malformed") and number == cut_at:
                if fault == "malformed":
                    self._event('{"id": "chatcmpl-double", "choices": [{"delta": ')
                self._cut_connection()
                return
            owner._sleep(owner.piece_delay_s)
            if owner._stopping.is_set():
                self._cut_connection()
                return
            self._event(chunk({"content": piece}))
        if fault in ("disconnect", "malformed"):  # an answer of one piece: cut before the end
            self._cut_connection()
            return
        self._event(chunk({}, finish))
        if (body.get("stream_options") or {}).get("include_usage"):
            self._event({"id": "chatcmpl-double", "object": "chat.completion.chunk", "created": int(time.time()),
                         "model": body["model"], "choices": [],
                         "usage": {"prompt_tokens": 1, "completion_tokens": len(pieces),
                                   "total_tokens": 1 + len(pieces)}})
        self._event("[DONE]")
        self._write_chunk(b"")


@pytest.fixture
def openai_double() -> Iterator[OpenAIDouble]:
    double = OpenAIDouble().start()
    try:
        yield double
    finally:
        double.stop()


def main() -> None:
    """The double as a process of its own (benchmarks/bench_server.py): prints its base URL, then
    serves until its standard input closes."""
    parser = argparse.ArgumentParser(description="a test double of vLLM's OpenAI-compatible protocol")
    parser.add_argument("--model", action="append", required=True, help="a served model name (repeatable)")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before each chat answer")
    parser.add_argument("--answer", default="Hello from the double.")
    args = parser.parse_args()
    double = OpenAIDouble(models=args.model, delay_s=args.delay, answer=args.answer).start()
    print(double.url, flush=True)
    try:
        sys.stdin.read()
    finally:
        double.stop()


if __name__ == "__main__":
    main()
