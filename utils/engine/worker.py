"""The inference worker: a separate process that holds the resident adapters and answers requests over a pipe.

Both ends live here: `main` runs in the child, `WorkerProcess` is the parent's handle to it.
The parent never touches CUDA; a CUDA context that a sticky error has poisoned dies with this process.
The child is a fresh interpreter (`python -c "...utils.engine.worker import main..."`), not a multiprocessing
spawn: spawn re-runs the parent's __main__, which under Streamlit is the app script.
What they say to each other is in utils/engine/protocol.py.
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
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection

from PIL import Image

from models.contract import CHAT, RunOptions, TokenCallback
from utils.config import ROOT, Settings
from utils.engine import fault_injection
from utils.engine.pool import AdapterPool
from utils.engine.protocol import EXIT_AFTER_REPLY, Reply, Request, Token, classify, receive_images, send_images
from utils.messages import one_line

FATAL_EXIT_CODE = 70
STOP_GRACE_S = 3.0


@dataclass
class Outcome:
    """What one request came to: a Reply's kind, or "hang" / "died" when none came."""

    kind: str
    reply: Reply | None = None
    exitcode: int | None = None
    callback_error: BaseException | None = None


def free_memory() -> None:
    """After an OOM: collect garbage and return cached blocks, without initialising CUDA."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


# ---- child side -------------------------------------------------------------------------------

def _exit_with_parent(parent_pid: int) -> None:
    """A worker must not outlive its parent, even while stuck in a model call."""
    while True:
        time.sleep(1.0)
        if os.getppid() != parent_pid:
            os._exit(0)


def _answer(pool: AdapterPool, request: Request, images: list[Image.Image], on_token: TokenCallback | None) -> Reply:
    try:
        if request.fault is not None:
            fault_injection.act_out(request.fault)
        if request.task == CHAT:
            result = pool.chat(request.model, images, request.options, on_token)
        else:
            result = pool.run(request.model, images[0], request.task, request.options, on_token)
        return Reply("ok", result=result, resident=tuple(pool.resident))
    except Exception as exc:
        kind, code = classify(exc)
        error_type, message = f"{type(exc).__module__}:{type(exc).__qualname__}", one_line(exc)
    # Outside the except block the exception, its traceback and the frames holding tensors are gone,
    # so the memory they pin can actually be freed.
    if kind == "oom":
        free_memory()
    return Reply(kind, error_type=error_type, message=message, code=code, resident=tuple(pool.resident))


def _serve(conn: Connection, pool: AdapterPool) -> None:
    while True:
        try:
            request = conn.recv()
            if request is None:
                return
            images = receive_images(conn, request)
        except (EOFError, OSError):  # the parent is gone
            return
        on_token = (lambda text: conn.send(Token(text))) if request.stream else None
        reply = _answer(pool, request, images, on_token)
        del images  # a large page should not stay alive while the worker waits for the next one
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
        settings, max_resident = conn.recv()
    except (EOFError, OSError):
        return
    pool = AdapterPool(settings, max_resident)
    try:
        _serve(conn, pool)
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
        else:
            outcome.kind, outcome.reply = message.kind, message
            return


class WorkerProcess:
    """The parent's handle: start, send a request, wait with a deadline, kill. `max_resident` models stay
    loaded in it at a time."""

    def __init__(self, settings: Settings, max_resident: int):
        ours, theirs = socket.socketpair()
        with theirs:
            # The child's stdout goes to our stderr: the CLI's stdout carries JSON.
            command = python_command("utils.engine.worker", str(theirs.fileno()), str(os.getpid()))
            self._process = subprocess.Popen(command, pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, stdout=2)
        self._conn = Connection(ours.detach())
        try:
            self._conn.send((settings, max_resident))
        except OSError:  # a child that died at once shows as such at the first request
            pass
        self.settings = settings  # the worker's own copy: a different profile needs a fresh worker
        self.resident: tuple[str, ...] = ()

    @property
    def pid(self) -> int:
        return self._process.pid

    @property
    def alive(self) -> bool:
        return self._process.poll() is None

    @property
    def exitcode(self) -> int | None:
        return self._process.poll()

    def request(self, model: str, images: Sequence[Image.Image], task: str, options: RunOptions,
                on_token: TokenCallback | None, timeout: float, fault: str | None = None) -> Outcome:
        """`images`: the page, or a chat's pages. `fault`: a fault_injection kind the worker acts out
        instead of running the model."""
        fields = dict(model=model, task=task, options=options, stream=on_token is not None, fault=fault)
        outcome = Outcome("hang")  # until a message says otherwise
        try:
            send_images(self._conn, fields, images)
            await_reply(self._conn, timeout, on_token, outcome)
        except OSError:  # died while idle
            outcome.kind = "died"
        except BaseException:  # e.g. Ctrl-C while waiting: an answer left in the pipe would go to the next request
            self._end(kill=True)
            raise
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
