"""The websocket feed against real clients on 127.0.0.1 (port 0), one asyncio.run per test."""

import asyncio
import json
import logging
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from c2p_stream.events import end_message, hello_message
from c2p_stream.feed import FeedServer, encode_message, handle_client_message, resolve_static

HELLO = hello_message({"name": "test-model", "k": 4})
PONG = {"type": "pong", "schema": 1}


def run_with_server(scenario, **options):
    """asyncio.run(scenario(server)) with a started FeedServer, closed afterwards."""
    async def main():
        server = FeedServer(port=0, hello=HELLO, **options)
        await server.start()
        try:
            await asyncio.wait_for(scenario(server), 30)
        finally:
            await server.close()
    asyncio.run(main())


async def recv_json(ws, timeout_s=5.0):
    return json.loads(await asyncio.wait_for(ws.recv(), timeout_s))


async def wait_for_clients(server, n, timeout_s=5.0):
    deadline = time.monotonic() + timeout_s
    while server.clients != n:
        assert time.monotonic() < deadline, f"{server.clients} clients, expected {n}"
        await asyncio.sleep(0.005)


async def http_get(port, path, method="GET"):
    """Raw HTTP/1.1 request, so the path reaches the server exactly as written."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    fields = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), {k.lower(): v for k, v in fields.items()}, body


def test_hello_first_then_every_message_in_order(label_event_factory):
    messages = [label_event_factory(i).to_message() for i in range(20)]

    async def scenario(server):
        async with connect(server.url) as ws:
            assert await recv_json(ws) == HELLO
            assert server.clients == 1
            for message in messages:
                server.publish(message)
            assert [await recv_json(ws) for _ in messages] == messages
        await wait_for_clients(server, 0)

    run_with_server(scenario)


def test_publish_threadsafe_from_a_worker_thread(label_event_factory):
    async def scenario(server):
        async with connect(server.url) as ws:
            await recv_json(ws)
            worker = threading.Thread(target=lambda: [
                server.publish_threadsafe(label_event_factory(i).to_message()) for i in range(5)])
            worker.start()
            assert [(await recv_json(ws))["seq"] for _ in range(5)] == list(range(5))
            worker.join()

    run_with_server(scenario)


def test_slow_clients_lose_only_their_own_oldest_messages(label_event_factory):
    """15 readers get all 300 messages; 5 clients that never read drop theirs, bounded."""
    n_messages, queue_size = 300, 32
    messages = [label_event_factory(i).to_message() for i in range(n_messages)]  # ~2.7 kB each

    async def read_all(ws):
        got = []
        while not got or got[-1].get("seq") != n_messages - 1:
            got.append(await recv_json(ws, 10))
        return got

    async def scenario(server):
        readers = [await connect(server.url) for _ in range(15)]
        idle = [await connect(server.url) for _ in range(5)]
        await wait_for_clients(server, 20)
        reading = [asyncio.create_task(read_all(ws)) for ws in readers]
        publish_cpu_s = []  # CPU time, so that a busy CI machine preempting us does not count
        for message in messages:
            start = time.thread_time()
            server.publish(message)
            publish_cpu_s.append(time.thread_time() - start)
            await asyncio.sleep(0.002)
        for got in await asyncio.gather(*reading):
            assert got[0] == HELLO
            assert [m["type"] for m in got[1:]] == ["labels"] * n_messages  # no gap
            assert [m["seq"] for m in got[1:]] == list(range(n_messages))
        assert max(publish_cpu_s) < 0.005, f"publish() took up to {max(publish_cpu_s) * 1e3:.1f} ms"

        stats = server.client_stats()
        assert all(s["queued"] <= queue_size for s in stats)
        # Bounded by websockets' write limit (32 KiB) plus the message in flight.
        assert all(s["buffered_bytes"] <= 32 * 1024 + 2 * 4096 for s in stats)
        assert sum(s["dropped"] > 0 for s in stats) == 5

        gaps = 0
        for ws in idle:  # now they read: every loss is announced by a gap of the right size
            got = await read_all(ws)
            assert got[0] == HELLO
            last_seq, pending_gap, delivered = -1, 0, 0
            for message in got[1:]:
                if message["type"] == "gap":
                    assert pending_gap == 0 and message["dropped"] > 0
                    pending_gap = message["dropped"]
                    gaps += 1
                    continue
                assert message["seq"] == last_seq + 1 + pending_gap
                last_seq, pending_gap, delivered = message["seq"], 0, delivered + 1
            assert delivered < n_messages
        assert gaps >= 5
        for ws in readers + idle:
            await ws.close()

    run_with_server(scenario, queue_size=queue_size)


@pytest.mark.parametrize("how", ["missing", "wrong query", "wrong header", "other scheme"])
def test_token_rejected_before_the_handshake(how, caplog):
    caplog.set_level(logging.DEBUG, logger="c2p_stream.feed")
    logs = []

    async def scenario(server):
        url, headers = server.url, {}
        if how == "wrong query":
            url += "?token=guess"
        elif how == "wrong header":
            headers = {"Authorization": "Bearer guess"}
        elif how == "other scheme":
            headers = {"Authorization": "Basic s3cret-token"}
        with pytest.raises(InvalidStatus) as rejected:
            await connect(url, additional_headers=headers)
        assert rejected.value.response.status_code == 401
        assert server.clients == 0

    run_with_server(scenario, token="s3cret-token", log=logs.append)
    assert "s3cret-token" not in caplog.text + "".join(logs)


@pytest.mark.parametrize("how", ["query", "header"])
def test_right_token_accepted_and_never_logged(how, caplog):
    caplog.set_level(logging.DEBUG, logger="c2p_stream.feed")
    logs = []

    async def scenario(server):
        if how == "query":
            ws = await connect(server.url + "?token=s3cret-token")
        else:
            ws = await connect(server.url, additional_headers={"Authorization": "Bearer s3cret-token"})
        assert await recv_json(ws) == HELLO
        await ws.close()

    run_with_server(scenario, token="s3cret-token", log=logs.append)
    assert "GET /ws" in caplog.text  # websockets' debug log ran through the filter
    assert "s3cret-token" not in caplog.text + "".join(logs)


def test_origin_allow_list():
    async def scenario(server):
        with pytest.raises(InvalidStatus) as rejected:
            await connect(server.url, origin="http://evil.example")
        assert rejected.value.response.status_code == 403
        for origin in ("http://good.example", None):  # None: a non-browser client
            async with connect(server.url, origin=origin) as ws:
                assert await recv_json(ws) == HELLO

    run_with_server(scenario, allowed_origins=["http://good.example"])


def test_oversize_client_message_closes_that_client_only(label_event_factory):
    async def scenario(server):
        async with connect(server.url) as other, connect(server.url) as big:
            await recv_json(other), await recv_json(big)
            await big.send("x" * 5000)
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(big.recv(), 5)
            assert closed.value.rcvd.code == 1009
            await wait_for_clients(server, 1)
            server.publish(label_event_factory(7).to_message())
            assert (await recv_json(other))["seq"] == 7

    run_with_server(scenario, max_message_bytes=4096)


def test_junk_is_ignored_and_ping_answered(label_event_factory):
    async def scenario(server):
        async with connect(server.url) as ws:
            await recv_json(ws)
            for junk in ("not json", b"\x00\xff binary", "[1, 2]", '{"type": "subscribe"}', "[" * 3000):
                await ws.send(junk)
            await ws.send('{"type": "ping"}')
            assert await recv_json(ws) == PONG
            server.publish(label_event_factory(3).to_message())
            assert (await recv_json(ws))["seq"] == 3
            assert server.ignored_messages == 5

    run_with_server(scenario)


def test_http_serves_the_page_and_nothing_outside_web_root():
    async def scenario(server):
        status, headers, body = await http_get(server.port, "/")
        assert status == 200 and headers["content-type"].startswith("text/html")
        assert b'id="timeline"' in body
        for path, content_type in (("/app.js", "text/javascript"), ("/style.css", "text/css")):
            status, headers, _ = await http_get(server.port, path)
            assert status == 200 and headers["content-type"].startswith(content_type)
        for path in ("/../pyproject.toml", "/%2e%2e/pyproject.toml", "/%2E%2E%2Fpyproject.toml",
                     "/..%2f..%2fpyproject.toml", "//etc/passwd", "/%2fetc/passwd",
                     "/..\\pyproject.toml", "/%00", "/missing.html", "/./index.html"):
            status, _, body = await http_get(server.port, path)
            assert status == 404, path
            assert b"[project]" not in body and b"root:" not in body
        status, _, _ = await http_get(server.port, "/ws")  # no Upgrade header
        assert status == 426
        status, headers, _ = await http_get(server.port, "/", method="POST")
        assert status == 405 and headers["allow"] == "GET"

    run_with_server(scenario)


def test_resolve_static_refuses_symlinks_out_of_web_root(tmp_path):
    web = tmp_path / "web"
    web.mkdir()
    (web / "index.html").write_text("<p>hi</p>")
    (tmp_path / "secret.txt").write_text("secret")
    (web / "leak.txt").symlink_to(tmp_path / "secret.txt")
    (web / "up").symlink_to(tmp_path)
    assert resolve_static(web, "/") == (web / "index.html").resolve()
    assert resolve_static(web, "/index.html") == (web / "index.html").resolve()
    for path in ("/leak.txt", "/up/secret.txt", "/up", "/..", "secret.txt", tmp_path.as_posix() + "/secret.txt"):
        assert resolve_static(web, path) is None, path


def test_close_sends_going_away_to_every_client(label_event_factory):
    async def scenario(server):
        clients = [await connect(server.url) for _ in range(5)]
        await asyncio.gather(*(recv_json(ws) for ws in clients))
        server.publish(label_event_factory(0).to_message())
        server.publish(end_message("shutdown"))
        start = time.monotonic()
        await server.close("shutdown")
        assert time.monotonic() - start < 1.0
        for ws in clients:
            assert (await recv_json(ws))["type"] == "labels"
            assert await recv_json(ws) == end_message("shutdown")
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 2)
            assert closed.value.rcvd.code == 1001
            assert closed.value.rcvd.reason == "shutdown"

    run_with_server(scenario)


def test_close_does_not_wait_forever_on_a_stuck_client(label_event_factory):
    async def scenario(server):
        stuck = await connect(server.url, close_timeout=0.1)
        await wait_for_clients(server, 1)
        for i in range(300):
            server.publish(label_event_factory(i).to_message())
            await asyncio.sleep(0)
        start = time.monotonic()
        await server.close()
        assert time.monotonic() - start < 2 * server.close_timeout_s + 0.5
        assert server.clients == 0
        await stuck.close()

    run_with_server(scenario, queue_size=8, close_timeout_s=0.3)


@pytest.mark.parametrize("host, token, warns", [
    ("0.0.0.0", None, True), ("0.0.0.0", "t0ken", False), ("127.0.0.1", None, False)])
def test_non_loopback_bind_without_token_warns(host, token, warns):
    logs = []

    async def main():
        server = FeedServer(host, 0, hello=HELLO, token=token, log=logs.append)
        await server.start()
        assert server.port != 0
        await server.close()

    asyncio.run(main())
    assert any("WARNING" in line and "token" in line for line in logs) == warns


def test_encode_message_turns_non_finite_floats_into_null():
    assert json.loads(encode_message({"a": [1.0, float("nan")], "b": float("inf")})) == {"a": [1.0, None], "b": None}


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.sampled_from(["type", "x"]), st.sampled_from(["ping", "pong"]) | inner, max_size=3))


@settings(max_examples=2000, deadline=None)
@given(st.one_of(st.text(), st.binary()))
def test_handle_client_message_never_raises_on_random_frames(raw):
    assert handle_client_message(raw) in (None, PONG)


@settings(max_examples=300, deadline=None)
@given(JSON_VALUES.map(json.dumps))
def test_handle_client_message_never_raises_on_random_json(raw):
    reply = handle_client_message(raw)
    message = json.loads(raw)
    assert (reply == PONG) == (isinstance(message, dict) and message.get("type") == "ping")
    assert reply in (None, PONG)


def test_handle_client_message_answers_ping_only():
    assert handle_client_message('{"type": "ping"}') == PONG
    assert handle_client_message('{"type": "ping", "id": 3}') == PONG
    assert handle_client_message(b'{"type": "ping"}') is None
    assert handle_client_message('"ping"') is None
    assert handle_client_message("[" * 100_000) is None
