"""The client for models on an OpenAI-compatible server, against the protocol's test double."""
from __future__ import annotations

import base64
import io
import json
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import pytest
from PIL import Image

from models.vlm.server import ServerClient, ServerError, ServerOptions, ServerUnreachable, image_data_url
from tests.conftest import ROOT
from tests.openai_double import STATS_PATH, OpenAIDouble

HELLO = [{"role": "user", "content": [{"type": "text", "text": "Read it."}]}]


def client_for(double: OpenAIDouble, **options) -> ServerClient:
    options.setdefault("backoff_s", 0.01)
    options.setdefault("timeout_s", 5)
    return ServerClient(ServerOptions(base_url=double.url, **options), "served-model")


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_streams_tokens_in_order_and_sends_the_parameters(openai_double):
    openai_double.answer = "Счёт 4521 dated 12 March"
    client = client_for(openai_double)
    pieces: list[str] = []
    done = client.complete(HELLO, {"max_tokens": 50, "temperature": 0.0},
                           extra_body={"repetition_penalty": 1.05, "top_k": 1}, on_token=pieces.append)
    assert done.text == "Счёт 4521 dated 12 March"
    assert pieces == ["Счёт ", "4521 ", "dated ", "12 ", "March"]
    assert (done.finish_reason, done.tokens, done.attempts) == ("stop", 5, 1) and done.pieces == pieces
    body = openai_double.requests[0].body
    assert body["model"] == "served-model" and body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert (body["max_tokens"], body["temperature"], body["repetition_penalty"], body["top_k"]) == (50, 0.0, 1.05, 1)
    assert openai_double.requests[0].headers["authorization"] == "Bearer EMPTY"


def test_a_token_cap_reached_is_reported_as_length(openai_double):
    openai_double.answer = "a b c d e f g"
    done = client_for(openai_double).complete(HELLO, {"max_tokens": 3})
    assert (done.text, done.finish_reason, done.tokens) == ("a b c ", "length", 3)


@pytest.mark.parametrize("fault", ["429", "500", "disconnect", "malformed", "slow"])
def test_a_retryable_failure_is_retried(openai_double, fault):
    openai_double.slow_s = 3
    openai_double.fail_next(fault)
    client = client_for(openai_double, timeout_s=1 if fault == "slow" else 5)
    done = client.complete(HELLO, {"max_tokens": 50})
    assert done.text == "Hello from the double." and done.attempts == 2
    assert [r.fault for r in openai_double.requests] == [fault, None]


@pytest.mark.parametrize("fault,reason", [
    ("500", "HTTP 500: injected failure"),
    ("429", "HTTP 429: Too many requests"),
    ("disconnect", "the connection dropped"),
    ("malformed", "not valid JSON"),
])
def test_it_gives_up_after_the_retries_with_one_line(openai_double, fault, reason):
    openai_double.fail_next(*[fault] * 3)
    client = client_for(openai_double, retries=2)
    with pytest.raises(ServerError) as caught:
        client.complete(HELLO, {})
    message = str(caught.value)
    assert not isinstance(caught.value, ServerUnreachable)  # it answered, badly: not a dead server
    assert reason in message and "gave up after 3 attempts" in message and "\n" not in message
    assert len(openai_double.requests) == 3


def test_a_client_error_is_not_retried(openai_double):
    client = ServerClient(ServerOptions(base_url=openai_double.url, backoff_s=0), "no-such-model")
    with pytest.raises(ServerError, match="HTTP 404: The model `no-such-model` does not exist"):
        client.complete(HELLO, {})
    assert len(openai_double.requests) == 1


def test_backoff_doubles_and_honours_retry_after(openai_double):
    openai_double.fail_next("500", "500", "500")
    client = client_for(openai_double, retries=3, backoff_s=0.5)
    waits: list[float] = []
    client._sleep = waits.append
    client.complete(HELLO, {})
    assert len(waits) == 3
    for attempt, wait in enumerate(waits):  # 0.5, 1, 2 with +-20% jitter
        assert 0.5 * 2 ** attempt * 0.8 <= wait <= 0.5 * 2 ** attempt * 1.2
    openai_double.retry_after = "7"
    openai_double.fail_next("429")
    waits.clear()
    client.complete(HELLO, {})
    assert waits == [7.0]


def test_the_api_key_comes_from_the_named_environment_variable(openai_double, monkeypatch):
    openai_double.api_key = "s3cret"
    monkeypatch.delenv("TEST_VLLM_KEY", raising=False)
    with pytest.raises(ServerError, match="TEST_VLLM_KEY"):
        client_for(openai_double, api_key_env="TEST_VLLM_KEY")
    with pytest.raises(ServerError, match="HTTP 401"):
        client_for(openai_double).complete(HELLO, {})
    monkeypatch.setenv("TEST_VLLM_KEY", "s3cret")
    assert client_for(openai_double, api_key_env="TEST_VLLM_KEY").complete(HELLO, {}).text


def _run_together(client: ServerClient, count: int) -> None:
    threads = [threading.Thread(target=client.complete, args=(HELLO, {})) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)


@pytest.mark.parametrize("limit", [2, 6])
def test_requests_in_flight_stay_within_the_limit(openai_double, limit):
    openai_double.delay_s = 0.3
    _run_together(client_for(openai_double, concurrency=limit), 6)
    assert len(openai_double.requests) == 6
    assert openai_double.max_in_flight == limit


def test_clients_of_one_server_share_its_limit(openai_double):
    openai_double.delay_s = 0.3
    first, second = client_for(openai_double, concurrency=2), client_for(openai_double, concurrency=2)
    threads = [threading.Thread(target=c.complete, args=(HELLO, {})) for c in (first, second) * 3]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(openai_double.requests) == 6 and openai_double.max_in_flight == 2


def test_replicas_are_taken_in_turn_and_a_dead_one_is_skipped_by_the_retry():
    first, second = OpenAIDouble().start(), OpenAIDouble().start()
    try:
        client = ServerClient(ServerOptions(base_url=[first.url, second.url], backoff_s=0), "served-model")
        for _ in range(4):
            client.complete(HELLO, {})
        assert (len(first.requests), len(second.requests)) == (2, 2)
        dead = f"http://127.0.0.1:{unused_port()}/v1"
        client = ServerClient(ServerOptions(base_url=[dead, first.url], backoff_s=0), "served-model")
        done = client.complete(HELLO, {})
        assert (done.attempts, done.url) == (2, first.url)
    finally:
        first.stop()
        second.stop()


def test_a_retried_stream_does_not_repeat_what_was_shown(openai_double):
    openai_double.answer = "one two three four five six seven eight"
    openai_double.fail_next("disconnect")  # the first attempt is cut after half the pieces
    shown: list[str] = []
    done = client_for(openai_double).complete(HELLO, {}, on_token=shown.append)
    assert done.attempts == 2
    assert shown[:4] == ["one ", "two ", "three ", "four "]
    assert "".join(shown) == done.text == "one two three four five six seven eight"
    assert len(done.pieces) == 8  # the pieces of the attempt that answered, not of both


def test_stop_when_ends_the_request_early(openai_double):
    openai_double.answer = "la " * 200
    openai_double.piece_delay_s = 0.005
    done = client_for(openai_double).complete(HELLO, {}, stop_when=lambda pieces: len(pieces) >= 10)
    assert done.finish_reason == "stopped" and done.text == "la " * 10 and done.pieces == ["la "] * 10


def test_a_dead_server_is_a_clear_error():
    client = ServerClient(ServerOptions(base_url=f"http://127.0.0.1:{unused_port()}/v1", retries=1, backoff_s=0),
                          "served-model")
    started = time.monotonic()
    with pytest.raises(ServerUnreachable, match=r"cannot connect .*gave up after 2 attempts"):
        client.complete(HELLO, {})
    assert time.monotonic() - started < 5
    health = client.health()
    assert not health.ok and not health.replicas[0].reachable
    assert "cannot connect" in health.summary


def test_health_reports_reachability_listing_and_latency(openai_double):
    client = client_for(openai_double)
    health = client.health()
    assert health.ok and health.replicas[0].latency_s is not None and health.replicas[0].latency_s < 2
    assert health.summary.startswith("served-model served (")
    openai_double.models = ["other-model"]
    health = client.health()
    assert not health.ok and health.replicas[0].reachable
    assert "does not serve served-model; it serves: other-model" in health.summary
    openai_double.models_faults.extend(["500", "malformed"])
    assert client.health().replicas[0].error == "HTTP 500: injected failure"
    assert "not valid JSON" in client.health().replicas[0].error


def test_health_of_a_stalled_server_ends_at_its_timeout(openai_double):
    openai_double.models_faults.append("slow")
    openai_double.slow_s = 10
    started = time.monotonic()
    health = client_for(openai_double).health(timeout_s=0.5)
    assert time.monotonic() - started < 3
    assert not health.ok and health.replicas[0].error == "no answer within the timeout"


def test_options_take_one_url_or_a_list_and_refuse_others():
    assert ServerOptions(base_url="http://gpu1:8000/v1/").base_url == ["http://gpu1:8000/v1"]
    assert len(ServerOptions(base_url=["http://a/v1", "https://b/v1"]).base_url) == 2
    with pytest.raises(ValueError, match="http:// or https://"):
        ServerOptions(base_url="gpu1:8000")
    with pytest.raises(ValueError, match="at least one URL"):
        ServerOptions(base_url=[])


def test_image_data_url_carries_the_exact_pixels():
    image = Image.new("RGB", (37, 19), "white")
    image.putpixel((3, 4), (200, 10, 30))
    url = image_data_url(image)
    assert url.startswith("data:image/png;base64,")
    decoded = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert decoded.size == (37, 19) and decoded.convert("RGB").getpixel((3, 4)) == (200, 10, 30)


def test_the_double_runs_as_a_process_of_its_own():
    double = subprocess.Popen([sys.executable, str(ROOT / "tests" / "openai_double.py"), "--model", "served-model",
                               "--answer", "from another process"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        url = double.stdout.readline().strip()
        done = ServerClient(ServerOptions(base_url=url), "served-model").complete(HELLO, {})
        assert done.text == "from another process"
        stats = json.loads(urllib.request.urlopen(url.removesuffix("/v1") + STATS_PATH + "?reset").read())
        assert stats == {"requests": 1, "max_in_flight": 1}
    finally:
        double.communicate(timeout=10)
    assert double.returncode == 0
