"""The inference worker: a separate process that holds the resident adapters and answers requests over a pipe.

Both ends live here: `main` runs in the child, `WorkerProcess` is the parent's handle to it.
The parent never touches CUDA; a CUDA context that a sticky error has poisoned dies with this process.
The child is a fresh interpreter (`python -c "...utils.engine.worker import main..."`), not a multiprocessing
spawn: spawn re-runs the parent's __main__, which under Streamlit is the app script.
Protocol: the parent first sends (settings, faults_left); then per request a Request and the page's raw
pixels; the child answers with any number of Token / FaultTaken messages and one Reply. `None` asks
the child to exit.
"""
from __future__ import annotations

import gc
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Literal

from PIL import Image

from models.contract import PageResult, RunOptions, TokenCallback
from utils.config import ROOT, Settings
from utils.engine.fault_injection import FaultInjector
from utils.engine.pool import AdapterPool
from utils.messages import one_line

# CUDA runtime errors after which the context is unusable until the process exits (cudaError_t values).
STICKY_CUDA_CODES = frozenset({700, 702, 710, 716, 717, 718, 719})
NO_KERNEL_IMAGE = 209
GPU_GONE_CODES = frozenset({46, 100})  # devices unavailable, no CUDA-capable device
EXIT_AFTER_REPLY = frozenset({"fatal", "unsupported_arch", "gpu_lost"})
FATAL_EXIT_CODE = 70
STOP_GRACE_S = 3.0

ReplyKind = Literal["ok", "error", "oom", "fatal", "unsupported_arch", "gpu_lost"]


@dataclass
class Request:
    model: str
    task: str
    options: RunOptions
    stream: bool
    mode: str
    size: tuple[int, int]
    palette: list[int] | None


@dataclass
class Token:
    text: str


@dataclass
class FaultTaken:
    """An injected fault is about to happen; `left` is what the next worker may still inject."""

    left: int


@dataclass
class Reply:
    kind: ReplyKind
    result: PageResult | None = None
    error_type: str = "builtins:RuntimeError"  # "module:qualname"; a class would make the parent import its module
    message: str = ""
    code: int | None = None
    resident: tuple[str, ...] = ()

    def exception(self) -> Exception:
        """The worker's exception type with its one-line message, if the parent knows that type already."""
        module, _, qualname = self.error_type.partition(":")
        found = sys.modules.get(module)
        for part in qualname.split("."):
            found = getattr(found, part, None)
        if isinstance(found, type) and issubclass(found, Exception):
            try:
                return found(self.message)
            except Exception:  # a constructor that wants more than a message
                pass
        return RuntimeError(f"{qualname.rsplit('.', 1)[-1]}: {self.message}")


@dataclass
class Outcome:
    """What one request came to: a Reply's kind, or "hang" / "died" when none came."""

    kind: str
    reply: Reply | None = None
    exitcode: int | None = None
    callback_error: BaseException | None = None
    faults_left: int | None = None  # set when the worker took an injected fault


def _is_out_of_memory(exc: BaseException, text: str) -> bool:
    torch = sys.modules.get("torch")
    oom_class = getattr(torch, "OutOfMemoryError", None) if torch else None
    return (isinstance(exc, MemoryError) or (oom_class is not None and isinstance(exc, oom_class))
            or "out of memory" in text.lower())


def classify(exc: BaseException) -> tuple[ReplyKind, int | None]:
    """Error class and CUDA error code: by torch.AcceleratorError.error_code when present, else by message."""
    code = getattr(exc, "error_code", None)
    code = code if isinstance(code, int) else None
    text = str(exc)
    if code == NO_KERNEL_IMAGE or "no kernel image is available" in text:
        return "unsupported_arch", code
    if code in GPU_GONE_CODES or "no CUDA-capable device is detected" in text:
        return "gpu_lost", code
    if code in STICKY_CUDA_CODES:
        return "fatal", code
    if _is_out_of_memory(exc, text):
        return "oom", code
    if "CUDA error" in text:  # any other CUDA error: the context can no longer be trusted
        return "fatal", code
    return "error", code


def free_memory() -> None:
    """After an OOM: collect garbage and return cached blocks, without initialising CUDA."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def send_image(conn: Connection, request_fields: dict, image: Image.Image) -> None:
    """Header, then the raw pixels: copied once on each side, never pickled."""
    palette = image.getpalette() if image.mode in ("P", "PA") else None
    conn.send(Request(**request_fields, mode=image.mode, size=image.size, palette=palette))
    conn.send_bytes(image.tobytes())


def image_from(request: Request, data: bytes) -> Image.Image:
    image = Image.frombytes(request.mode, request.size, data)
    if request.palette is not None:
        image.putpalette(request.palette)
    return image


# ---- child side -------------------------------------------------------------------------------

def _exit_with_parent(parent_pid: int) -> None:
    """A worker must not outlive its parent, even while stuck in a model call."""
    while True:
        time.sleep(1.0)
        if os.getppid() != parent_pid:
            os._exit(0)


def _answer(pool: AdapterPool, faults: FaultInjector, request: Request, image: Image.Image,
            on_token: TokenCallback | None) -> Reply:
    try:
        faults.maybe_fault()
        result = pool.run(request.model, image, request.task, request.options, on_token)
        return Reply("ok", result=result, resident=tuple(pool.resident))
    except Exception as exc:
        kind, code = classify(exc)
        error_type, message = f"{type(exc).__module__}:{type(exc).__qualname__}", one_line(exc)
    # Outside the except block the exception, its traceback and the frames holding tensors are gone,
    # so the memory they pin can actually be freed.
    if kind == "oom":
        free_memory()
    return Reply(kind, error_type=error_type, message=message, code=code, resident=tuple(pool.resident))


def _serve(conn: Connection, pool: AdapterPool, faults: FaultInjector) -> None:
    while True:
        try:
            request = conn.recv()
            if request is None:
                return
            image = image_from(request, conn.recv_bytes())
        except (EOFError, OSError):  # the parent is gone
            return
        on_token = (lambda text: conn.send(Token(text))) if request.stream else None
        reply = _answer(pool, faults, request, image, on_token)
        del image  # a large page should not stay alive while the worker waits for the next one
        try:
            conn.send(reply)
        except OSError:
            return
        if reply.kind in EXIT_AFTER_REPLY:
            os._exit(FATAL_EXIT_CODE)  # at once: cleanup would touch the broken CUDA context


def python_command(module: str, *args: str) -> list[str]:
    """A fresh interpreter that runs `module.main()` with this project importable."""
    code = f"import sys; sys.path.insert(0, {str(ROOT)!r}); from {module} import main; main()"
    return [sys.executable, "-c", code, *args]


def main() -> None:
    """Child entry: argv is the pipe's file descriptor and the parent's pid."""
    fd, parent_pid = int(sys.argv[1]), int(sys.argv[2])
    os.set_inheritable(fd, False)  # nothing this process starts may hold the pipe open
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C hits the whole process group; the parent decides
    threading.Thread(target=_exit_with_parent, args=(parent_pid,), daemon=True).start()
    conn = Connection(fd)
    try:
        settings, faults_left = conn.recv()
    except (EOFError, OSError):
        return
    pool = AdapterPool(settings)
    try:
        _serve(conn, pool, FaultInjector(faults_left, lambda left: conn.send(FaultTaken(left))))
    finally:
        pool.close()


# ---- parent side ------------------------------------------------------------------------------

def await_reply(conn: Connection, timeout: float, on_token: TokenCallback | None, outcome: Outcome) -> None:
    """Fills `outcome` as messages arrive, so what was learnt survives an interruption. Tokens go to
    on_token; a caller's on_token error is kept and the reply still awaited. The child alone holds the
    other end of the pipe, so its death reads as end of file."""
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not conn.poll(remaining):
            outcome.kind = "hang"
            return
        try:
            message = conn.recv()
        except (EOFError, OSError):
            outcome.kind = "died"
            return
        if isinstance(message, Token):
            if on_token is not None and outcome.callback_error is None:
                try:
                    on_token(message.text)
                except BaseException as exc:  # e.g. Streamlit stopping the script: stop forwarding, finish the request
                    outcome.callback_error = exc
        elif isinstance(message, FaultTaken):
            outcome.faults_left = message.left
        else:
            outcome.kind, outcome.reply = message.kind, message
            return


class WorkerProcess:
    """The parent's handle: start, send a request, wait with a deadline, kill."""

    def __init__(self, settings: Settings, faults_left: int | None):
        ours, theirs = socket.socketpair()
        with theirs:
            # The child's stdout goes to our stderr: the CLI's stdout carries JSON.
            self._process = subprocess.Popen(python_command("utils.engine.worker", str(theirs.fileno()), str(os.getpid())),
                                             pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, stdout=2)
        self._conn = Connection(ours.detach())
        try:
            self._conn.send((settings, faults_left))
        except OSError:  # a child that died at once shows as such at the first request
            pass
        self.resident: tuple[str, ...] = ()
        self.faults_left = faults_left  # as the child reports taking them

    @property
    def pid(self) -> int:
        return self._process.pid

    @property
    def alive(self) -> bool:
        return self._process.poll() is None

    @property
    def exitcode(self) -> int | None:
        return self._process.poll()

    def request(self, model: str, image: Image.Image, task: str, options: RunOptions,
                on_token: TokenCallback | None, timeout: float) -> Outcome:
        fields = dict(model=model, task=task, options=options, stream=on_token is not None)
        outcome = Outcome("hang")  # until a message says otherwise
        try:
            send_image(self._conn, fields, image)
            await_reply(self._conn, timeout, on_token, outcome)
        except OSError:  # died while idle
            outcome.kind = "died"
        except BaseException:  # e.g. Ctrl-C while waiting: an answer left in the pipe would go to the next request
            self._end(kill=True)
            raise
        finally:
            if outcome.faults_left is not None:
                self.faults_left = outcome.faults_left
        if outcome.kind in ("hang", "died") or outcome.kind in EXIT_AFTER_REPLY:
            self._end(kill=outcome.kind == "hang")
            outcome.exitcode = self._process.returncode
        elif outcome.reply is not None:
            self.resident = outcome.reply.resident
        return outcome

    def _end(self, kill: bool) -> None:
        """Reap the process, killed first if asked or if it outstays the grace time: no zombie is left."""
        if kill:
            self._process.kill()
        try:
            self._process.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self.resident = ()

    def stop(self) -> None:
        """Ask politely (the adapters release what they hold), then end it and close the pipe."""
        if self.alive:
            try:
                self._conn.send(None)
            except OSError:
                pass
        self._end(kill=False)
        self._conn.close()
