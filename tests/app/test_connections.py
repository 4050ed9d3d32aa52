"""HTTP below the routes, on a real uvicorn on loopback: HEAD on GET routes, requests with ambiguous body
framing, and slow or surplus connections (`app.http_framing`, `app.connections`).

The server runs in a thread of this process, configured as `qa-serve` configures it
(`app.cli.uvicorn_config`), so that the test can count what ran. Slow clients are raw sockets trickling a
header line or a body byte every 0.3 s; their counts and the time they take are bounded.
"""

import json
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient

from app.cli import uvicorn_config
from app.main import build_app
from app.settings import ServiceSettings
from tests.conftest import free_port, served

ASK = {"context": "비는 오후에 그친다.", "question": "비는 언제?", "decoding": {"strategy": "greedy"}}


def read_all(sock: socket.socket) -> bytes:
    out = b""
    try:
        while chunk := sock.recv(65536):
            out += chunk
    except OSError:
        pass
    return out


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1]) if response.startswith(b"HTTP/1.1 ") else 0


# -- HEAD ----------------------------------------------------------------------------------------------------
def test_head_answers_like_get_without_a_body(client: TestClient):
    for path in ("/healthz", "/readyz", "/openapi.json", "/adapters", "/"):
        got, head = client.get(path), client.head(path)
        assert head.status_code == got.status_code == 200, path
        assert head.content == b"" and head.headers["content-length"] == str(len(got.content)), path
        assert head.headers["content-type"] == got.headers["content-type"]
    metrics = client.head("/metrics")  # its length changes with every request counted: only none sent
    assert (
        metrics.status_code == 200 and metrics.content == b"" and int(metrics.headers["content-length"]) > 0
    )
    assert client.head("/batch/0123456789abcdef0123456789abcdef").status_code == 404
    not_get = client.head("/answer")
    assert not_get.status_code == 405 and not_get.headers["allow"] == "POST" and not_get.content == b""


# -- ambiguous framing ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def framing_app(tiny_settings: ServiceSettings, tmp_path_factory):
    settings = tiny_settings.model_copy(
        update={"adapters_dir": None, "jobs_dir": tmp_path_factory.mktemp("jobs"), "port": free_port()}
    )
    return build_app(settings)


SMUGGLED = b"0\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
AMBIGUOUS = {
    "cl+te": b"Content-Length: 48\r\nTransfer-Encoding: chunked\r\n",
    "te+cl": b"Transfer-Encoding: chunked\r\nContent-Length: 48\r\n",
    "two cl": b"Content-Length: 5\r\nContent-Length: 48\r\n",
}


@pytest.mark.parametrize("parser", ["httptools", "h11"])
@pytest.mark.parametrize("headers", list(AMBIGUOUS), ids=list(AMBIGUOUS))
def test_a_request_framed_two_ways_is_refused_and_the_connection_closed(framing_app, parser, headers):
    config = uvicorn.Config(framing_app, host="127.0.0.1", port=free_port(), http=parser, log_level="warning")
    with served(config) as port:
        service = framing_app.state.service
        ran, real = [], service.answer
        service.answer = lambda req, plan=None: ran.append(req) or real(req, plan)
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            body = json.dumps(ASK).encode()
            sock.sendall(
                b"POST /answer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                + AMBIGUOUS[headers]
                + b"\r\n"
                + b"%x\r\n" % len(body)
                + body
                + b"\r\n"
                + SMUGGLED
            )
            response = read_all(sock)  # the server closes: the smuggled GET is never answered
            assert status_of(response) == 400, response
            assert response.count(b"HTTP/1.1 ") == 1 and not ran
            if parser == "h11" and headers != "two cl":  # else the parser refuses it, with its plain 400
                assert b'"invalid_framing"' in response and b"connection: close" in response.lower()
            assert httpx.post(f"http://127.0.0.1:{port}/answer", json=ASK, timeout=60).status_code == 200
        finally:
            service.answer = real


# -- slow and surplus clients --------------------------------------------------------------------------------
HEADER_S, BODY_S, MAX_CONNECTIONS = 1.0, 2.0, 8


@pytest.fixture(scope="module")
def guarded_port(tiny_settings: ServiceSettings, tmp_path_factory) -> Iterator[int]:
    settings = tiny_settings.model_copy(
        update={
            "adapters_dir": None,
            "jobs_dir": tmp_path_factory.mktemp("jobs"),
            "port": free_port(),
            "header_timeout_s": HEADER_S,
            "body_timeout_s": BODY_S,
            "max_connections": MAX_CONNECTIONS,
        }
    )
    app = build_app(settings)
    with served(uvicorn_config(app, settings, None)) as port:
        yield port


def trickle(
    port: int, first: bytes, drip: bytes, results: list, every: float = 0.3, upto: float = 10.0
) -> None:
    """Send `first`, then `drip` every `every` seconds until the server answers or closes; record
    (seconds taken, the response) in `results`."""
    started = time.monotonic()
    sock = socket.create_connection(("127.0.0.1", port), timeout=upto)
    sock.sendall(first)
    sock.settimeout(every)
    response = b""
    while time.monotonic() - started < upto:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            try:
                sock.sendall(drip)
            except OSError:
                response += read_all(sock)
                break
            continue
        except OSError:
            break
        if not chunk:
            break
        response += chunk
    results.append((time.monotonic() - started, response))
    sock.close()


def test_slow_heads_and_bodies_are_cut_off_while_others_are_served(guarded_port):
    port, results, threads = guarded_port, [], []
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\n"
    post = (
        b"POST /answer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 200\r\n\r\n{"
    )
    for first, drip in [(head, b"X-Slow: 1\r\n")] * 3 + [(post, b" ")] * 3:
        threads.append(threading.Thread(target=trickle, args=(port, first, drip, results)))
        threads[-1].start()
    answered = 0
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as other:
        while any(t.is_alive() for t in threads):  # the server keeps serving everyone else meanwhile
            assert other.get("/healthz").status_code == 200
            assert other.post("/answer", json=ASK).status_code == 200
            answered += 1
    for thread in threads:
        thread.join()
    assert answered >= 2 and len(results) == 6
    for _, response in results:
        assert status_of(response) == 408 and b'"request_timeout"' in response, response
        assert b"connection: close" in response
    heads = sorted(took for took, response in results if b"head" in response)
    bodies = sorted(took for took, response in results if b"body" in response)
    assert len(heads) == 3 and len(bodies) == 3
    assert HEADER_S - 0.1 < heads[0] and heads[-1] < HEADER_S + 1.5, heads  # trickling never extends it
    assert BODY_S - 0.1 < bodies[0] and bodies[-1] < BODY_S + 1.5, bodies


def test_connections_past_the_cap_get_503_at_once_and_idle_ones_are_closed(guarded_port):
    idle = [socket.create_connection(("127.0.0.1", guarded_port), timeout=10) for _ in range(MAX_CONNECTIONS)]
    time.sleep(0.2)  # let the server see them all
    started = time.monotonic()
    extra = socket.create_connection(("127.0.0.1", guarded_port), timeout=10)
    refused = read_all(extra)
    assert status_of(refused) == 503 and b'"too_many_connections"' in refused and b"retry-after: 1" in refused
    assert time.monotonic() - started < 1.0
    for sock in idle:  # connections that never send a byte are closed at the head deadline
        assert status_of(read_all(sock)) == 408
        sock.close()
    assert time.monotonic() - started < HEADER_S + 2
    assert httpx.get(f"http://127.0.0.1:{guarded_port}/healthz", timeout=10).status_code == 200


def test_a_kept_alive_connection_serves_a_second_request_and_times_out_its_next_head(guarded_port):
    sock = socket.create_connection(("127.0.0.1", guarded_port), timeout=10)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    time.sleep(0.5)
    sock.sendall(b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n")  # each head gets its own deadline
    time.sleep(0.5)
    sock.sendall(b"GET /healthz HTTP/1.1\r\n")  # then a head that never ends
    response = read_all(sock)
    assert response.count(b"HTTP/1.1 200 OK") == 2 and response.count(b'{"status":"ok"}') == 1, response
    assert response.count(b"HTTP/1.1 408 Request Timeout") == 1
    assert response.index(b"HTTP/1.1 408") > response.rindex(b"HTTP/1.1 200")
