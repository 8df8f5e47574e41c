"""Reliability drills for the websocket feed (issue 6): load, shutdown, attacks, traversal, fuzz.

Every drill talks to real sockets on 127.0.0.1 only, bounds each of its loops in count and
time, and returns a JSON-able dict of figures. Sizes and durations are parameters: the test
suite runs small versions, ``python -m c2p_stream.drills`` the issue's.

- :func:`fan_out`: readers, never-readers and random droppers on an in-process FeedServer fed
  by a fake engine thread. The clients live in a child process, so that the memory and file
  descriptors measured here are the server's.
- :func:`graceful_shutdown`: SIGTERM to a real ``c2p-stream`` with N clients connected.
- :func:`attacks`: tokens, origins, oversize and junk messages, a flood, half-open
  connections, abrupt disconnects; a witness client must miss nothing; fds back to baseline.
- :func:`traversal`: path traversal URLs against the live page server.
- :func:`fuzz_client_messages`, :func:`fuzz_config_loader`: hypothesis, thousands of cases.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import gc
import hashlib
import hmac
import inspect
import json
import logging
import math
import os
import queue
import random
import re
import resource
import secrets
import selectors
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import types
from pathlib import Path
from typing import Any, Callable, Literal, Union, get_args, get_origin, get_type_hints

import numpy as np
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from c2p_stream.events import AttributeLabel, LabelEvent, end_message, hello_message
from c2p_stream.feed import FeedServer, handle_client_message

LOOPBACK = "127.0.0.1"
HELLO = hello_message({"name": "drill", "k": 4})
PONG = {"type": "pong", "schema": 1}
GOOD_ORIGIN = "http://good.example"
Progress = Callable[[str], None]


# --- shared helpers -----------------------------------------------------------------------

def _label_message(seq: int, published_s: float, k: int = 4) -> dict[str, Any]:
    """A `labels` message as large as the engine's (~2.8 kB): k probabilities, 50-point
    prototypes; `extra.published_monotonic_s` lets a client on this host compute latency."""
    def label(cluster: int, trend: str, slope: float) -> AttributeLabel:
        logits = [math.sin(seq * 0.7 + 1.3 * i) for i in range(k)]
        logits[cluster] += 3.0
        total = sum(math.exp(x) for x in logits)
        return AttributeLabel(cluster, f"mid {trend}", "mid", trend, [math.exp(x) / total for x in logits],
                              [slope * (i / 49 - 0.5) + 0.01 * math.sin(i + seq) for i in range(50)])

    event = LabelEvent(
        seq=seq, start_s=float(seq), end_s=float(seq + 2), speech=True,
        arousal=label(seq % k, "rising", 0.3), valence=label((seq + 1) % k, "falling", -0.3),
        pairing=f"A{seq % k + 1}-V{(seq + 1) % k + 1}", direction="north-west",
        level_dbfs=-20.0 - 3 * math.sin(seq), latency_ms=12.5 + math.cos(seq),
        extra={"published_monotonic_s": published_s})
    return event.to_message()


def _stats_ms(values_s: list[float]) -> dict[str, float | int]:
    """p50/p99/max in ms of durations in seconds."""
    if not values_s:
        return {"n": 0}
    ms = np.asarray(values_s, dtype=np.float64) * 1000.0
    return {"n": int(ms.size), "p50": round(float(np.percentile(ms, 50)), 3),
            "p99": round(float(np.percentile(ms, 99)), 3), "max": round(float(ms.max()), 3)}


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError("no VmRSS in /proc/self/status")


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _server_side_sockets(port: int) -> int:
    """This process's TCP sockets whose local port is `port`, listening socket excluded."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] != "0A":  # 0A: LISTEN
                inodes.add(fields[9])
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            link = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:[") and link[8:-1] in inodes:
            count += 1
    return count


def _raise_fd_limit(needed: int) -> dict[str, int]:
    """Raise the soft RLIMIT_NOFILE to `needed` (at most the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return {"soft_before": soft, "soft": resource.getrlimit(resource.RLIMIT_NOFILE)[0]}


def _wait_until(predicate: Callable[[], bool], timeout_s: float, period_s: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(period_s)
    return True


class _ServerThread:
    """A FeedServer on its own asyncio loop in a daemon thread (the CLI runs it on its main
    thread; here the drill's main thread coordinates). Use as a context manager."""

    def __init__(self, **options: Any) -> None:
        self.options = options
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="drill-feed", daemon=True)
        self.server: FeedServer | None = None

    def __enter__(self) -> _ServerThread:
        self._thread.start()
        self.server = FeedServer(LOOPBACK, 0, hello=HELLO, **self.options)
        self.run(self.server.start())
        return self

    def run(self, coro, timeout_s: float = 60.0) -> Any:
        """Run a coroutine on the server's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def call(self, function: Callable[..., Any], *args: Any) -> Any:
        """Call a plain function on the server's loop (FeedServer is not thread-safe)."""
        async def call():
            return function(*args)
        return self.run(call(), 30.0)

    def close(self) -> float:
        """FeedServer.close(); returns the seconds it took."""
        start = time.monotonic()
        self.run(self.server.close(), 60.0)
        return time.monotonic() - start

    def __exit__(self, *exc: Any) -> None:
        try:
            if self.server is not None:
                self.close()
        finally:
            async def cancel_rest():
                tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
            try:
                self.run(cancel_rest(), 10.0)
            finally:
                self.loop.call_soon_threadsafe(self.loop.stop)
                self._thread.join(10.0)
                if not self._thread.is_alive():
                    self.loop.close()


def _handshake_request(port: int, path: str = "/ws", extra: str = "") -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (f"GET {path} HTTP/1.1\r\nHost: {LOOPBACK}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n").encode()


def _client_frame(opcode: int, payload: bytes, masked: bool = True) -> bytes:
    """One final frame as a client sends it (masked, as RFC 6455 requires, unless told not to)."""
    head = bytes([0x80 | opcode])
    length = len(payload)
    bit = 0x80 if masked else 0
    if length < 126:
        head += bytes([bit | length])
    elif length < 65536:
        head += bytes([bit | 126]) + struct.pack("!H", length)
    else:
        head += bytes([bit | 127]) + struct.pack("!Q", length)
    if not masked:
        return head + payload
    mask = os.urandom(4)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def _close_code(data: bytes) -> int | None:
    """The code of the close frame in the server's (unmasked) frames after the 101 response."""
    _, _, data = data.partition(b"\r\n\r\n")
    pos = 0
    while pos + 2 <= len(data):
        opcode, length = data[pos] & 0x0F, data[pos + 1] & 0x7F
        pos += 2
        if length == 126:
            length, pos = struct.unpack("!H", data[pos:pos + 2])[0], pos + 2
        elif length == 127:
            length, pos = struct.unpack("!Q", data[pos:pos + 8])[0], pos + 8
        payload, pos = data[pos:pos + length], pos + length
        if opcode == 0x8:
            return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
    return None


def _recv_all(sock: socket.socket, timeout_s: float) -> bytes:
    """Everything the peer sends until it closes (or `timeout_s` passes)."""
    sock.settimeout(0.2)
    data, deadline = b"", time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            continue
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    return data


async def _http_get(port: int, path: str, timeout_s: float = 5.0) -> tuple[int, bytes]:
    """Raw HTTP/1.1 GET, so `path` reaches the server exactly as written: (status, whole response)."""
    reader, writer = await asyncio.open_connection(LOOPBACK, port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {LOOPBACK}:{port}\r\n\r\n".encode("latin-1"))
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), timeout_s)
    finally:
        writer.close()
    match = re.match(rb"HTTP/1\.1 (\d{3})", raw)
    return (int(match.group(1)) if match else 0), raw


# --- fan-out ------------------------------------------------------------------------------

class _FakeEngine:
    """The engine's worker thread without a model. Per hop it waits until the window is due,
    runs a fixed CPU-bound numpy workload (which, like torch, releases the GIL while it
    computes; elementwise, so no BLAS thread pool muddles the timing), builds a real-size
    `labels` message and hands it to publish_threadsafe. Like LiveRunner, a worker that fell
    behind labels the newest due window and counts the ones it skipped (they show as jumps
    in `seq`), so one stall does not pile up on the hops after it. Hop latency = window due
    -> handed to the feed, as the engine's `latency_ms` (LiveRunner stamps it before calling
    the sinks); the publish_threadsafe call is timed apart, and with it included."""

    def __init__(self, feed: FeedServer, infer_ms: float) -> None:
        self.feed = feed
        self._x = np.random.default_rng(0).standard_normal(1 << 16).astype(np.float32)
        self._y = np.empty_like(self._x)
        self.reps = 20  # calibrate on 20 reps, best of 10, so a busy moment does not skew it
        per_rep_s = min(self._timed_infer() for _ in range(10)) / self.reps
        self.reps = max(1, round(infer_ms / 1000.0 / per_rep_s))
        self.infer_ms = round(min(self._timed_infer() for _ in range(10)) * 1000.0, 2)

    def _timed_infer(self) -> float:
        start = time.perf_counter()
        self._infer()
        return time.perf_counter() - start

    def _infer(self) -> None:
        for _ in range(self.reps):
            np.tanh(self._x, out=self._y)

    def run(self, n_hops: int, hop_s: float, timeout_s: float) -> dict[str, list]:
        """n_hops windows due every hop_s s, labelled on a worker thread: per labelled hop its
        latency, the cost of the publish_threadsafe call and the latency with that call, in
        seconds; the seqs published."""
        out: dict[str, list] = {"hop_latency_s": [], "publish_call_s": [], "with_publish_s": [], "seqs": []}

        def work() -> None:
            start = time.monotonic() + hop_s
            seq = 0
            while seq < n_hops:
                delay = start + seq * hop_s - time.monotonic()
                if delay > 0:
                    time.sleep(delay)  # the window's last sample arrives
                seq = max(seq, min(n_hops - 1, int((time.monotonic() - start) / hop_s)))  # the newest
                due = start + seq * hop_s
                self._infer()
                message = _label_message(seq, time.monotonic())
                handed = time.monotonic()
                self.feed.publish_threadsafe(message)
                done = time.monotonic()
                out["hop_latency_s"].append(handed - due)
                out["publish_call_s"].append(done - handed)
                out["with_publish_s"].append(done - due)
                out["seqs"].append(seq)
                seq += 1

        worker = threading.Thread(target=work, name="drill-engine", daemon=True)
        worker.start()
        worker.join(timeout_s)
        if worker.is_alive():
            raise RuntimeError(f"fake engine did not finish {n_hops} hops within {timeout_s:.0f} s")
        return out


async def _monitor(server: FeedServer, period_s: float, samples: list, peers: dict) -> None:
    """On the server's loop: RSS and client count every period_s, and per client (by peer
    address) when it was seen and its largest queue and write buffer."""
    while True:
        now = time.monotonic()
        samples.append((now, _rss_mb(), server.clients))
        for stats in server.client_stats():
            peer = peers.setdefault(stats["peer"], {"first_s": now, "max_queued": 0, "max_buffered_bytes": 0,
                                                    "max_dropped": 0})
            peer["last_s"] = now
            peer["max_queued"] = max(peer["max_queued"], stats["queued"])
            peer["max_buffered_bytes"] = max(peer["max_buffered_bytes"], stats["buffered_bytes"])
            peer["max_dropped"] = max(peer["max_dropped"], stats["dropped"])
        await asyncio.sleep(period_s)


class _Fleet:
    """The client process (see _fleet_main): JSON lines on its stdin and stdout."""

    def __init__(self, plan: dict[str, Any], log_dir: Path) -> None:
        self.stderr_path = log_dir / "fleet.stderr"
        self._stderr = open(self.stderr_path, "w")
        self.process = subprocess.Popen(
            [sys.executable, "-c", "from c2p_stream.drills.feed import _fleet_main; _fleet_main()"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, text=True)
        self._lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        self.send(plan)

    def _pump(self) -> None:
        for line in self.process.stdout:
            self._lines.put(line)
        self._lines.put("")

    def send(self, message: dict[str, Any]) -> None:
        self.process.stdin.write(json.dumps(message) + "\n")
        self.process.stdin.flush()

    def receive(self, timeout_s: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                line = self._lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise TimeoutError(f"client process silent for {timeout_s:.0f} s; {self.stderr_tail()}") from None
            if not line:
                raise RuntimeError(f"client process exited ({self.process.poll()}); {self.stderr_tail()}")
            if line.startswith("{"):
                return json.loads(line)

    def stderr_tail(self) -> str:
        self._stderr.flush()
        return self.stderr_path.read_text()[-2000:]

    def close(self) -> None:
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        self._stderr.close()


def fan_out(n_clients: int = 200, non_readers: int = 10, droppers: int = 10, stream_s: float = 600.0,
            hop_s: float = 1.0, *, infer_ms: float = 50.0, baseline_s: float | None = None,
            queue_size: int = 256, stall_timeout_s: float | None = 30.0, warmup_s: float | None = None,
            sample_s: float | None = None, seed: int = 0, progress: Progress | None = None) -> dict[str, Any]:
    """Fan-out to `n_clients`: readers, `non_readers` (half raw sockets that did the handshake
    by hand, half library clients that never call recv()) and `droppers` (connect, read a
    while, vanish without a close frame, again and again).

    One labels message per second of stream time, `stream_s` of them, paced every `hop_s`
    wall seconds (1.0 = real time; less replays the same messages faster). `baseline_s` of
    stream with 0 clients (default min(stream_s, 120)), half before the clients connect and
    half after they leave, gives the engine hop latency to compare with. Memory slope: linear
    fit of the server process's RSS after `warmup_s` (default 10% of the stream) of wall time;
    live Python blocks after a full GC at the stream's start and end tell a leak from garbage
    that waits for the cyclic GC.
    """
    say = progress or (lambda text: None)
    n_readers = n_clients - non_readers - droppers
    if n_readers < 1:
        raise ValueError(f"no readers left: {n_clients} clients, {non_readers} non-readers, {droppers} droppers")
    n_hops, n_base = int(round(stream_s)), int(round(min(stream_s, 120.0) if baseline_s is None else baseline_s))
    wall_s = n_hops * hop_s
    warmup_s = 0.1 * wall_s if warmup_s is None else warmup_s
    sample_s = max(0.1, min(1.0, 5 * hop_s)) if sample_s is None else sample_s
    drop_log: list[tuple[float, str]] = []
    samples: list[tuple[float, float, int]] = []
    peers: dict[str, dict[str, Any]] = {}

    with tempfile.TemporaryDirectory(prefix="c2p-drill-") as tmp, \
            _ServerThread(queue_size=queue_size, stall_timeout_s=stall_timeout_s,
                          log=lambda text: drop_log.append((time.monotonic(), text))) as st:
        engine = _FakeEngine(st.server, infer_ms)
        monitor = asyncio.run_coroutine_threadsafe(_monitor(st.server, sample_s, samples, peers), st.loop)
        say(f"fan_out: baseline, 0 clients, {n_base // 2} hops")
        base = engine.run(n_base // 2, hop_s, timeout_s=n_base * hop_s * 3 + 30)

        fleet = _Fleet({"url": st.server.url, "port": st.server.port, "readers": n_readers,
                        "raw_non_readers": non_readers // 2, "lib_non_readers": non_readers - non_readers // 2,
                        "droppers": droppers, "seed": seed}, Path(tmp))
        try:
            ready = fleet.receive(timeout_s=60 + 0.2 * n_clients)
            connected = _wait_until(lambda: st.server.clients >= n_readers + non_readers, 30)
            say(f"fan_out: {st.server.clients} clients connected; streaming {n_hops} hops every {hop_s:g} s")
            blocks_start = _live_blocks()
            stream_start, loop_cpu_start = time.monotonic(), st.call(time.thread_time)
            fleet.send({"go": True, "wall_s": wall_s, "hold_s": [0.02 * wall_s, 0.15 * wall_s],
                        "pause_s": [0.0, 0.02 * wall_s]})
            loaded = engine.run(n_hops, hop_s, timeout_s=wall_s * 3 + 60)
            stream_end, loop_cpu_s = time.monotonic(), st.call(time.thread_time) - loop_cpu_start
            blocks_end = _live_blocks()
            st.call(st.server.publish, end_message("eof"))
            result = fleet.receive(timeout_s=60 + 0.1 * n_clients)
        finally:
            fleet.close()
        gone = _wait_until(lambda: st.server.clients == 0, 15)
        say(f"fan_out: clients gone; baseline, 0 clients, {n_base - n_base // 2} hops")
        base_after = engine.run(n_base - n_base // 2, hop_s, timeout_s=n_base * hop_s * 3 + 30)
        monitor.cancel()
        st.call(lambda: None)  # let the cancellation land before reading the monitor's data
        close_s = st.close()
        stalled = st.server.stalled_clients

    # Delivery to readers: every labels message, in order, then `end`.
    readers = result["readers"]
    published = loaded["seqs"]  # every hop unless the engine fell behind and skipped some
    complete = [r for r in readers if r["seqs_digest"] == _digest(published) and r["gaps"] == 0
                and r["end"] == "eof"]
    latencies = [x / 1000.0 for r in readers for x in r["latency_ms"]]

    # Engine hop latency with 0 and with n_clients clients.
    zero = _stats_ms(base["hop_latency_s"] + base_after["hop_latency_s"])
    loaded_stats = _stats_ms(loaded["hop_latency_s"])
    zero_with = _stats_ms(base["with_publish_s"] + base_after["with_publish_s"])
    loaded_with = _stats_ms(loaded["with_publish_s"])

    # Server memory after warm-up.
    steady = [(t, rss) for t, rss, _ in samples if stream_start + warmup_s <= t <= stream_end]
    late = [(t, rss) for t, rss in steady if t >= (stream_start + stream_end) / 2]
    during = [clients for t, _, clients in samples if stream_start <= t <= stream_end]

    # Non-readers: bounded while connected, and when the server dropped them.
    stall_drops = {}
    for t, text in drop_log:
        if match := re.search(r"dropped client (\S+):", text):
            stall_drops[match.group(1)] = t
    non_reader_rows = []
    for item in ready["non_readers"]:
        peer = f"{LOOPBACK}:{item['port']}"
        seen = peers.get(peer, {})
        row = {"kind": item["kind"], "peer": peer, "max_queued": seen.get("max_queued"),
               "max_buffered_bytes": seen.get("max_buffered_bytes"), "dropped_messages": seen.get("max_dropped")}
        if peer in stall_drops:
            row["dropped_after_s"], row["dropped_by"] = round(stall_drops[peer] - item["connected_s"], 2), "stall timeout"
        elif seen and seen["last_s"] < stream_end - 2 * sample_s:
            row["dropped_after_s"] = round(seen["last_s"] + sample_s / 2 - item["connected_s"], 2)
            row["dropped_by"] = "keepalive ping timeout (gone with no stall log)"
        else:
            row["dropped_after_s"], row["dropped_by"] = None, "not dropped during the stream"
        non_reader_rows.append(row)
    max_queued = max((r["max_queued"] or 0 for r in non_reader_rows), default=0)
    max_buffered = max((r["max_buffered_bytes"] or 0 for r in non_reader_rows), default=0)
    message_bytes = len(json.dumps(_label_message(n_hops, time.monotonic()), separators=(",", ":")))

    return {
        "clients": {"total": n_clients, "readers": n_readers, "raw_non_readers": non_readers // 2,
                    "library_non_readers": non_readers - non_readers // 2, "droppers": droppers,
                    "all_connected_before_stream": connected, "all_gone_after": gone,
                    "server_clients_during_stream": {"min": min(during, default=0), "max": max(during, default=0)}},
        "stream": {"hops": n_hops, "hop_s": hop_s, "wall_s": round(stream_end - stream_start, 2),
                   "message_bytes": message_bytes, "queue_size": queue_size, "stall_timeout_s": stall_timeout_s},
        "delivery": {"readers_complete": len(complete), "readers": len(readers),
                     "labels_published": len(published),
                     "missing_labels": sum(len(published) - r["labels"] for r in readers),
                     "gap_messages": sum(r["gaps"] for r in readers),
                     "out_of_order_steps": sum(r["bad_steps"] for r in readers),
                     "client_tasks_timed_out": result["timed_out_tasks"],
                     "latency_ms": _stats_ms(latencies)},
        "engine_skipped_hops": {"clients_0": n_base - len(base["seqs"]) - len(base_after["seqs"]),
                                f"clients_{n_clients}": n_hops - len(published)},
        "engine_hop_latency_ms": {"fake_inference_ms": engine.infer_ms, "clients_0": zero,
                                  f"clients_{n_clients}": loaded_stats, "p99_ratio": _ratio(loaded_stats, zero)},
        "hop_latency_with_publish_call_ms": {"clients_0": zero_with, f"clients_{n_clients}": loaded_with,
                                             "p99_ratio": _ratio(loaded_with, zero_with)},
        "server_loop_cpu_ms_per_hop": round(loop_cpu_s / n_hops * 1000.0, 2),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "publish_call_us": {"clients_0": _stats_us(base["publish_call_s"] + base_after["publish_call_s"]),
                            f"clients_{n_clients}": _stats_us(loaded["publish_call_s"])},
        "server_memory": {"rss_mb_start": round(steady[0][1], 1) if steady else None,
                          "rss_mb_end": round(steady[-1][1], 1) if steady else None,
                          "rss_mb_max": round(max(r for _, r in steady), 1) if steady else None,
                          "slope_mb_per_hour": _slope_mb_per_hour(steady),
                          "slope_mb_per_hour_second_half": _slope_mb_per_hour(late),
                          "samples": len(steady), "warmup_s": round(warmup_s, 1),
                          # the process's live allocations after a full GC, clients connected at both
                          # points; includes the drill's own per-hop records (a few blocks a hop)
                          "live_blocks_after_gc": {"stream_start": blocks_start, "stream_end": blocks_end,
                                                   "per_hop": round((blocks_end - blocks_start) / n_hops, 1)}},
        "non_readers": non_reader_rows,
        "non_reader_bounds": {"queue_size": queue_size, "max_queued": max_queued,
                              "max_buffered_bytes": max_buffered,
                              "queued_bytes_bound": queue_size * message_bytes,
                              "dropped": sum(r["dropped_after_s"] is not None for r in non_reader_rows),
                              "stalled_clients": stalled},
        "droppers": result["droppers"],
        "close_s": round(close_s, 3),
    }


def _live_blocks() -> int:
    """Blocks allocated by Python after a full collection: what is really alive, not garbage
    that cycles keep until the cyclic GC next runs (RSS counts both)."""
    gc.collect()
    return sys.getallocatedblocks()


def _ratio(loaded: dict[str, Any], zero: dict[str, Any]) -> float | None:
    return round(loaded["p99"] / zero["p99"], 3) if zero.get("p99") else None


def _stats_us(values_s: list[float]) -> dict[str, float | int]:
    return {key: value if key == "n" else round(value * 1000.0, 1) for key, value in _stats_ms(values_s).items()}


def _slope_mb_per_hour(samples: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (monotonic s, RSS MB) samples, in MB per hour."""
    if len(samples) < 3:
        return None
    t, rss = np.array(samples).T
    return round(float(np.polyfit(t - t[0], rss, 1)[0]) * 3600.0, 2)


def _fleet_main() -> None:
    """Entry point of the client process: a plan line in, `ready`, a go line in, the result out."""
    plan = json.loads(sys.stdin.readline())
    print(json.dumps(asyncio.run(_fleet(plan))), flush=True)


async def _fleet(plan: dict[str, Any]) -> dict[str, Any]:
    url, port, rng = plan["url"], plan["port"], random.Random(plan["seed"])
    readers: list[ClientConnection] = []
    for begin in range(0, plan["readers"], 25):
        batch = range(begin, min(begin + 25, plan["readers"]))
        readers += await asyncio.gather(*(connect(url, open_timeout=30, close_timeout=2) for _ in batch))
    reading = [asyncio.create_task(_read_feed(ws)) for ws in readers]

    non_readers = []
    raw_sockets: list[socket.socket] = []
    for _ in range(plan["raw_non_readers"]):
        sock = socket.create_connection((LOOPBACK, port), timeout=10)
        sock.sendall(_handshake_request(port))
        response = b""
        while b"\r\n\r\n" not in response:  # read the 101 response, then never again
            chunk = sock.recv(1)
            if not chunk:
                raise RuntimeError("raw handshake failed")
            response += chunk
        if not response.startswith(b"HTTP/1.1 101"):
            raise RuntimeError(f"raw handshake refused: {response[:40]!r}")
        raw_sockets.append(sock)
        non_readers.append({"kind": "raw socket", "port": sock.getsockname()[1], "connected_s": time.monotonic()})
    silent: list[ClientConnection] = []
    for _ in range(plan["lib_non_readers"]):  # no keepalive: it could not see its own pongs
        ws = await connect(url, open_timeout=30, ping_interval=None, close_timeout=1)
        silent.append(ws)
        non_readers.append({"kind": "library, never recv()", "port": ws.local_address[1],
                            "connected_s": time.monotonic()})
    print(json.dumps({"non_readers": non_readers}), flush=True)

    go = json.loads(await asyncio.to_thread(sys.stdin.readline))
    stop_at = time.monotonic() + 0.9 * go["wall_s"]
    dropping = [asyncio.create_task(_dropper(url, port, i, random.Random(rng.random()), stop_at,
                                             rng.uniform(0, 0.3 * go["wall_s"]), go["hold_s"], go["pause_s"]))
                for i in range(plan["droppers"])]
    timeout_s = go["wall_s"] * 3 + 120
    done, pending = await asyncio.wait(reading + dropping, timeout=timeout_s)
    for task in pending:
        task.cancel()
    for sock in raw_sockets:
        sock.close()
    for ws in silent:
        ws.transport.abort()
    return {"readers": [t.result() for t in reading if t in done],
            "droppers": _sum_droppers([t.result() for t in dropping if t in done]),
            "timed_out_tasks": len(pending)}


async def _read_feed(ws: ClientConnection) -> dict[str, Any]:
    """A reader: every message until `end`; seq steps, gaps and latency of each labels message."""
    labels, first, last, bad_steps, gaps, end, latency_ms, seqs = 0, None, None, 0, 0, None, [], []
    try:
        async for raw in ws:
            now = time.monotonic()
            message = json.loads(raw)
            kind = message.get("type")
            if kind == "labels":
                seq = message["seq"]
                seqs.append(seq)
                if last is not None and seq <= last:
                    bad_steps += 1
                first = seq if first is None else first
                labels, last = labels + 1, seq
                latency_ms.append(round((now - message["extra"]["published_monotonic_s"]) * 1000.0, 3))
            elif kind == "gap":
                gaps += 1
            elif kind == "end":
                end = message["reason"]
                break
    except ConnectionClosed:
        pass
    await ws.close()
    return {"labels": labels, "first": first, "last": last, "bad_steps": bad_steps, "gaps": gaps, "end": end,
            "seqs_digest": _digest(seqs), "close_code": ws.close_code, "latency_ms": latency_ms}


def _digest(seqs: list[int]) -> str:
    return hashlib.sha256(",".join(map(str, seqs)).encode()).hexdigest()


DROP_MODES = ("library abort", "raw RST", "raw FIN, no close frame")


async def _dropper(url: str, port: int, index: int, rng: random.Random, stop_at: float, delay_s: float,
                   hold_s: list[float], pause_s: list[float], max_cycles: int = 1000) -> dict[str, Any]:
    """Connect, read for a random while, vanish without a close frame; again until stop_at."""
    stats = {"cycles": 0, "modes": {mode: 0 for mode in DROP_MODES}, "labels": 0, "discontinuities": 0,
             "errors": 0}
    await asyncio.sleep(delay_s)
    for cycle in range(max_cycles):
        if time.monotonic() >= stop_at:
            break
        mode, hold = DROP_MODES[(index + cycle) % len(DROP_MODES)], rng.uniform(*hold_s)
        try:
            if mode == "library abort":
                ws = await connect(url, open_timeout=10)
                last, until = None, time.monotonic() + hold
                while (left := until - time.monotonic()) > 0:
                    try:
                        message = json.loads(await asyncio.wait_for(ws.recv(), left))
                    except asyncio.TimeoutError:
                        break
                    if message.get("type") == "labels":
                        if last is not None and message["seq"] != last + 1:
                            stats["discontinuities"] += 1
                        last, stats["labels"] = message["seq"], stats["labels"] + 1
                    elif message.get("type") == "gap":
                        stats["discontinuities"] += 1
                ws.transport.abort()
            else:
                reader, writer = await asyncio.open_connection(LOOPBACK, port)
                writer.write(_handshake_request(port))
                until = time.monotonic() + hold
                while (left := until - time.monotonic()) > 0:
                    try:
                        if not await asyncio.wait_for(reader.read(65536), left):
                            break
                    except asyncio.TimeoutError:
                        break
                if mode == "raw RST":
                    writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                                               struct.pack("ii", 1, 0))
                    writer.transport.abort()
                else:
                    writer.close()
        except (OSError, ConnectionClosed, asyncio.TimeoutError):
            stats["errors"] += 1
        stats["cycles"] += 1
        stats["modes"][mode] += 1
        await asyncio.sleep(rng.uniform(*pause_s))
    return stats


def _sum_droppers(rows: list[dict[str, Any]]) -> dict[str, Any]:
    total = {"droppers": len(rows), "cycles": 0, "modes": {mode: 0 for mode in DROP_MODES}, "labels": 0,
             "discontinuities": 0, "errors": 0}
    for row in rows:
        for key in ("cycles", "labels", "discontinuities", "errors"):
            total[key] += row[key]
        for mode, count in row["modes"].items():
            total["modes"][mode] += count
    return total


# --- graceful shutdown --------------------------------------------------------------------

def _tiny_checkpoint(directory: Path) -> Path:
    """A small random log-mel checkpoint (the tests' tiny model), so the CLI needs no download."""
    from c2p_stream.drills.engine import tiny_checkpoint

    return tiny_checkpoint(directory)


def _speech_like_wav(path: Path, duration_s: float, seed: int = 0) -> Path:
    """Voiced harmonics under a 4 Hz syllable envelope with pauses, 16 kHz float wav."""
    import soundfile as sf

    rate = 16_000
    t = np.arange(int(duration_s * rate)) / rate
    f0 = 140 + 30 * np.sin(2 * np.pi * 0.3 * t)
    phase = 2 * np.pi * np.cumsum(f0) / rate
    voiced = sum(np.sin(h * phase) / h for h in range(1, 11))
    envelope = np.clip(np.sin(2 * np.pi * 4 * t), 0, None) * (np.sin(2 * np.pi * 0.2 * t) > -0.5)
    noise = np.random.default_rng(seed).normal(0, 0.005, t.size)
    sf.write(path, (0.15 * voiced * envelope + noise).astype(np.float32), rate, subtype="FLOAT")
    return path


def graceful_shutdown(n_clients: int = 200, *, phase: Literal["streaming", "waiting"] = "streaming",
                      checkpoint_dir: str | Path | None = None, audio_path: str | Path | None = None,
                      labels_before_term: int = 2, timeout_s: float = 120.0,
                      progress: Progress | None = None) -> dict[str, Any]:
    """SIGTERM to a real ``c2p-stream`` (paced file, tiny model) with `n_clients` connected.

    phase "streaming": after every client got `labels_before_term` labels; "waiting": while
    the CLI still waits for one more client (``--wait-clients n+1``). The bound is the feed's
    close timeout + 1 s; every client should get `end` (reason shutdown) then close 1001.
    """
    say = progress or (lambda text: None)
    close_timeout_s = inspect.signature(FeedServer).parameters["close_timeout_s"].default  # the CLI's
    with tempfile.TemporaryDirectory(prefix="c2p-drill-") as tmp:
        checkpoint = Path(checkpoint_dir) if checkpoint_dir else _tiny_checkpoint(Path(tmp) / "ckpt")
        audio = Path(audio_path) if audio_path else _speech_like_wav(Path(tmp) / "talk.wav", 300.0)
        wait = n_clients + (1 if phase == "waiting" else 0)
        command = [sys.executable, "-m", "c2p_stream.cli", "--checkpoint", str(checkpoint), "--file", str(audio),
                   "--no-dashboard", "--quiet", "--ws-port", "0", "--device", "cpu", "--wait-clients", str(wait)]
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        stderr: list[str] = []
        port_found: queue.Queue[int] = queue.Queue()

        def pump() -> None:
            for line in process.stderr:
                stderr.append(line.rstrip("\n"))
                if match := re.search(r"feed on ws://127\.0\.0\.1:(\d+)/ws", line):
                    port_found.put(int(match.group(1)))

        threading.Thread(target=pump, daemon=True).start()
        try:
            try:
                port = port_found.get(timeout=60)
            except queue.Empty:
                raise RuntimeError("c2p-stream did not open its feed: " + " | ".join(stderr[-5:])) from None
            say(f"graceful_shutdown: c2p-stream pid {process.pid} on port {port}; {n_clients} clients")
            figures = asyncio.run(asyncio.wait_for(
                _shutdown_scenario(process, port, n_clients, phase, labels_before_term, close_timeout_s), timeout_s))
        finally:
            if process.poll() is None:
                process.kill()
            process.wait(10)
    figures.update(returncode=process.returncode, close_timeout_s=close_timeout_s,
                   traceback_in_stderr=any("Traceback" in line for line in stderr), stderr_tail=stderr[-3:])
    return figures


async def _shutdown_scenario(process: subprocess.Popen, port: int, n_clients: int, phase: str,
                             labels_before_term: int, close_timeout_s: float) -> dict[str, Any]:
    url = f"ws://{LOOPBACK}:{port}/ws"
    clients: list[ClientConnection] = []
    for begin in range(0, n_clients, 50):
        count = min(50, n_clients - begin)
        clients += await asyncio.gather(*(connect(url, open_timeout=30, close_timeout=5) for _ in range(count)))
    term_sent = asyncio.get_running_loop().create_future()
    need = labels_before_term if phase == "streaming" else 0  # labels each client has before SIGTERM
    ready = {"count": 0, "event": asyncio.Event()}

    async def client(ws: ClientConnection) -> dict[str, Any]:
        row: dict[str, Any] = {"labels": 0, "end": None}
        counted = False
        try:
            async for raw in ws:
                message = json.loads(raw)
                if message["type"] == "labels":
                    row["labels"] += 1
                elif message["type"] == "end":
                    row["end"] = message["reason"]
                if not counted and row["labels"] >= need:
                    counted, ready["count"] = True, ready["count"] + 1
                    if ready["count"] == n_clients:
                        ready["event"].set()
        except ConnectionClosed:
            pass
        row["close_after_term_s"] = time.monotonic() - term_sent.result() if term_sent.done() else None
        row["code"], row["reason"] = ws.close_code, ws.close_reason
        return row

    tasks = [asyncio.create_task(client(ws)) for ws in clients]
    await asyncio.wait_for(ready["event"].wait(), 60)
    open_at_term = sum(not t.done() for t in tasks)
    start = time.monotonic()
    process.send_signal(signal.SIGTERM)
    term_sent.set_result(start)
    try:
        await asyncio.to_thread(process.wait, close_timeout_s + 30)
    except subprocess.TimeoutExpired:
        pass
    exit_s = time.monotonic() - start if process.poll() is not None else None
    done, pending = await asyncio.wait(tasks, timeout=close_timeout_s + 10)
    for task in pending:
        task.cancel()
    rows = [t.result() for t in tasks if t in done]
    codes: dict[str, int] = {}
    for row in rows:
        codes[str(row["code"])] = codes.get(str(row["code"]), 0) + 1
    close_times = [row["close_after_term_s"] for row in rows if row["close_after_term_s"] is not None]
    return {"phase": phase, "clients": n_clients, "clients_open_at_term": open_at_term,
            "min_labels_before_term": min((row["labels"] for row in rows), default=0) if phase == "streaming" else 0,
            "exit_s": None if exit_s is None else round(exit_s, 3), "bound_s": close_timeout_s + 1.0,
            "exit_within_bound": exit_s is not None and exit_s <= close_timeout_s + 1.0,
            "close_codes": codes, "clients_1001": sum(row["code"] == 1001 for row in rows),
            "clients_end_shutdown_then_1001": sum(row["end"] == "shutdown" and row["code"] == 1001 for row in rows),
            "client_close_after_term_ms": _stats_ms(close_times), "clients_unfinished": len(pending)}


# --- attacks ------------------------------------------------------------------------------

class _LogWatch(logging.Handler):
    """Every record of the feed's, websockets' and asyncio's loggers at DEBUG, plus the feed's
    log callable, searched for a secret."""

    LOGGERS = ("c2p_stream.feed", "websockets", "asyncio")
    IGNORED = "websockets.client"  # the drill's own clients put the token in their requests

    def __init__(self, secret: str) -> None:
        super().__init__(logging.DEBUG)
        self.secret, self.records, self.leaks, self.feed_lines = secret, 0, [], []
        self._levels: dict[str, int] = {}

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith(self.IGNORED):
            return
        text = self.format(record)  # message and traceback
        self.records += 1
        if self.secret in text:
            self.leaks.append(text[:300])

    def feed_log(self, text: str) -> None:
        self.feed_lines.append(text)
        if self.secret in text:
            self.leaks.append(text[:300])

    def __enter__(self) -> _LogWatch:
        logging.getLogger().addHandler(self)
        for name in self.LOGGERS:
            self._levels[name] = logging.getLogger(name).level
            logging.getLogger(name).setLevel(logging.DEBUG)
        return self

    def __exit__(self, *exc: Any) -> None:
        logging.getLogger().removeHandler(self)
        for name, level in self._levels.items():
            logging.getLogger(name).setLevel(level)


class _CompareDigestSpy:
    """Counts hmac.compare_digest calls (the feed looks it up on the hmac module per call)."""

    def __init__(self) -> None:
        self.calls = 0
        self._real = hmac.compare_digest

    def _spy(self, a: Any, b: Any) -> bool:
        self.calls += 1
        return self._real(a, b)

    def __enter__(self) -> _CompareDigestSpy:
        hmac.compare_digest = self._spy
        return self

    def __exit__(self, *exc: Any) -> None:
        hmac.compare_digest = self._real


class _Publisher:
    """Labels every hop_s from a thread, as the engine does, until stop()."""

    def __init__(self, feed: FeedServer, hop_s: float) -> None:
        self.feed, self.hop_s, self.published = feed, hop_s, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="drill-publisher", daemon=True)

    def _run(self) -> None:
        start = time.monotonic()
        while not self._stop.wait(max(0.0, start + (self.published + 1) * self.hop_s - time.monotonic())):
            self.feed.publish_threadsafe(_label_message(self.published, time.monotonic()))
            self.published += 1

    def start(self) -> _Publisher:
        self._thread.start()
        return self

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(10)
        return self.published


class _Witness:
    """A well-behaved client on its own thread and loop: records every message's arrival."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.arrivals: list[tuple[float, int]] = []  # (monotonic, seq)
        self.gaps = 0
        self.end: str | None = None
        self.close_code: int | None = None
        self.hello = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), name="drill-witness", daemon=True)

    async def _run(self) -> None:
        try:
            async with connect(self.url, open_timeout=10, close_timeout=5) as ws:
                async for raw in ws:
                    message = json.loads(raw)
                    if message["type"] == "hello":
                        self.hello.set()
                    elif message["type"] == "labels":
                        self.arrivals.append((time.monotonic(), message["seq"]))
                    elif message["type"] == "gap":
                        self.gaps += 1
                    elif message["type"] == "end":
                        self.end = message["reason"]
            self.close_code = ws.close_code
        except (ConnectionClosed, OSError, asyncio.TimeoutError):
            pass

    def start(self) -> _Witness:
        self._thread.start()
        return self

    def join(self, timeout_s: float) -> None:
        self._thread.join(timeout_s)

    def during(self, start: float, end: float, hop_s: float) -> dict[str, Any]:
        """Messages received in [start, end] and the longest silence, in hops."""
        times = [t for t, _ in self.arrivals if start <= t <= end]
        longest = max((b - a for a, b in zip(times, times[1:])), default=None)
        return {"received": len(times), "longest_silence_ms": None if longest is None else round(longest * 1000, 1),
                "longest_silence_hops": None if longest is None else round(longest / hop_s, 2)}


def attacks(n_half_open: int = 1000, flood_messages: int = 10_000, n_abrupt: int = 50, *,
            open_timeout_s: float = 2.0, hop_s: float = 0.05, max_message_bytes: int = 4096,
            seed: int = 0, progress: Progress | None = None) -> dict[str, Any]:
    """Bad input and hostile clients against a FeedServer with a token and an Origin allow-list,
    while a publisher thread sends labels every `hop_s` and a witness client reads them all.

    Each phase reports what the offending clients saw and what the witness saw meanwhile;
    at the end the witness must have every labels message, in order, and the process's open
    file descriptors must be back to their count before the attacks.
    """
    say = progress or (lambda text: None)
    rng = random.Random(seed)
    limits = _raise_fd_limit(2 * n_half_open + 1024)
    token = "drill-" + secrets.token_hex(16)
    fds_before_server = _open_fds()
    phases: dict[str, Any] = {}
    windows: dict[str, tuple[float, float]] = {}
    with _LogWatch(token) as watch, _CompareDigestSpy() as spy, \
            _ServerThread(token=token, allowed_origins=[GOOD_ORIGIN], open_timeout_s=open_timeout_s,
                          max_message_bytes=max_message_bytes, log=watch.feed_log) as st:
        server, port = st.server, st.server.port
        url = server.url
        witness = _Witness(f"{url}?token={token}").start()
        if not witness.hello.wait(10):
            raise RuntimeError("the witness client could not connect")
        publisher = _Publisher(server, hop_s).start()
        time.sleep(5 * hop_s)
        fds_baseline = _open_fds()

        def phase(name: str, run: Callable[[], dict[str, Any]]) -> None:
            say(f"attacks: {name}")
            start = time.monotonic()
            phases[name] = run()
            windows[name] = (start, time.monotonic())

        phase("auth", lambda: asyncio.run(_auth_attacks(url, port, token, spy)))
        phase("oversize", lambda: asyncio.run(_oversize(url, token, max_message_bytes)))
        phase("junk", lambda: asyncio.run(_junk(st, url, token, rng)))
        phase("bad_frames", lambda: _bad_frames(port, token))
        phase("flood", lambda: asyncio.run(_flood(st, url, token, flood_messages)))
        phase("half_open", lambda: _half_open(port, token, n_half_open, open_timeout_s))
        phase("abrupt", lambda: asyncio.run(_abrupt(st, url, port, token, n_abrupt)))

        back_to_one = _wait_until(lambda: st.call(lambda: server.clients) == 1, 10)
        fds_returned = _wait_until(lambda: _open_fds() <= fds_baseline, 10)
        fds_after_attacks = _open_fds()
        published = publisher.stop()
        st.call(server.publish, end_message("shutdown"))
        time.sleep(0.2)
        close_s = st.close()
        ignored, stalled = server.ignored_messages, server.stalled_clients
    witness.join(10)
    fds_after_close = _open_fds()

    seqs = [seq for _, seq in witness.arrivals]
    for name, (start, end) in windows.items():
        phases[name]["witness"] = witness.during(start, end, hop_s)
    return {
        "phases": phases,
        "witness": {"published": published, "received": len(seqs), "complete_in_order": seqs == list(range(published)),
                    "gap_messages": witness.gaps, "end": witness.end, "close_code": witness.close_code},
        "token": {"log_records_checked": watch.records, "feed_log_lines": len(watch.feed_lines),
                  "occurrences_in_logs": len(watch.leaks), "leaks": watch.leaks[:3],
                  "compare_digest_calls": spy.calls},
        "fds": {"before_server": fds_before_server, "baseline": fds_baseline,
                "after_attacks": fds_after_attacks, "returned_to_baseline": fds_returned,
                "after_close": fds_after_close, "limit": limits},
        "server": {"clients_back_to_witness_only": back_to_one, "ignored_messages": ignored,
                   "stalled_clients": stalled, "close_s": round(close_s, 3)},
    }


async def _auth_attacks(url: str, port: int, token: str, spy: _CompareDigestSpy) -> dict[str, Any]:
    wrong = secrets.token_hex(len(token) // 2)
    evil = "http://evil.example"
    cases = [  # (name, url suffix, headers, origin, expected status, candidate tokens offered)
        ("no token", "", {}, None, 401, 0),
        ("wrong token, query", f"?token={wrong}", {}, None, 401, 1),
        ("wrong token, bearer", "", {"Authorization": f"Bearer {wrong}"}, None, 401, 1),
        ("token one char short", f"?token={token[:-1]}", {}, None, 401, 1),
        ("token plus a char", f"?token={token}x", {}, None, 401, 1),
        ("empty token", "?token=", {}, None, 401, 0),  # parse_qs drops blank values
        ("token under basic scheme", "", {"Authorization": f"Basic {token}"}, None, 401, 0),
        ("wrong then right token", f"?token={wrong}", {"Authorization": f"Bearer {token}"}, None, 101, 2),
        ("wrong token, foreign origin", f"?token={wrong}", {}, evil, 401, 1),
        ("right token, foreign origin", f"?token={token}", {}, evil, 403, 1),
        ("right token, allowed origin", f"?token={token}", {}, GOOD_ORIGIN, 101, 1),
        ("right token, bearer, no origin", "", {"Authorization": f"Bearer {token}"}, None, 101, 1),
    ]
    rows = []
    for name, suffix, headers, origin, expected, offers in cases:
        calls = spy.calls
        row: dict[str, Any] = {"case": name, "expected": expected, "tokens_offered": offers}
        try:
            async with connect(url + suffix, additional_headers=headers, origin=origin, open_timeout=10) as ws:
                row["status"] = 101
                row["first_message"] = json.loads(await asyncio.wait_for(ws.recv(), 5))["type"]
        except InvalidStatus as err:
            row["status"] = err.response.status_code
            row["labels_in_response"] = b'"labels"' in (err.response.body or b"")
        row["compare_digest_calls"] = spy.calls - calls
        rows.append(row)

    def raw_rejection() -> dict[str, Any]:  # while labels flow: the whole answer to a bad token
        with socket.create_connection((LOOPBACK, port), timeout=5) as sock:
            sock.sendall(_handshake_request(port, f"/ws?token={wrong}"))
            data = _recv_all(sock, 5)
        return {"status_line": data.split(b"\r\n", 1)[0].decode("latin-1"), "bytes": len(data),
                "labels_in_response": b"labels" in data}

    raw = await asyncio.to_thread(raw_rejection)
    return {"cases": rows, "all_as_expected": all(r["status"] == r["expected"] for r in rows),
            "accepted_start_with_hello": all(r.get("first_message") == "hello" for r in rows if r["status"] == 101),
            "raw_bad_token": raw,
            # every offered token went through hmac.compare_digest, one call each
            "every_offer_compared": all(r["compare_digest_calls"] == r["tokens_offered"] for r in rows)}


async def _oversize(url: str, token: str, max_message_bytes: int) -> dict[str, Any]:
    async with connect(f"{url}?token={token}") as ws:  # exactly at the limit: still served
        await ws.recv()
        padding = max_message_bytes - len('{"type":"ping","pad":""}')
        await ws.send('{"type":"ping","pad":"' + "x" * padding + '"}')
        at_limit_answered = await _wait_for_type(ws, "pong", 5)
    async with connect(f"{url}?token={token}", close_timeout=5) as ws:
        await ws.recv()
        await ws.send("x" * (max_message_bytes + 1))
        code = None
        try:
            while True:
                await asyncio.wait_for(ws.recv(), 5)
        except ConnectionClosed as closed:
            code = closed.rcvd.code if closed.rcvd else None
        except asyncio.TimeoutError:
            pass
    return {"limit_bytes": max_message_bytes, "at_limit_answered": at_limit_answered, "over_limit_close_code": code}


async def _wait_for_type(ws: ClientConnection, kind: str, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    try:
        while (left := deadline - time.monotonic()) > 0:
            if json.loads(await asyncio.wait_for(ws.recv(), left)).get("type") == kind:
                return True
    except (asyncio.TimeoutError, ConnectionClosed):
        pass
    return False


async def _junk(st: _ServerThread, url: str, token: str, rng: random.Random) -> dict[str, Any]:
    frames: list[str | bytes] = [rng.randbytes(rng.randint(1, 4000)) for _ in range(50)]
    frames += ["{", "nul", "{'type': 'ping'}", '{"type": "ping"', "\u0000\u2028", "[" * 3000, "1e999999",
               "9" * 4000, '{"type": ["ping"]}', '{"type": "PING"}', '"ping"', "[]", "{}", "null"]
    frames += ['{"type": "subscribe", "n": %d}' % i for i in range(20)]
    before = st.call(lambda: st.server.ignored_messages)
    async with connect(f"{url}?token={token}") as ws:
        await ws.recv()
        for frame in frames:
            await ws.send(frame)
        await ws.send('{"type": "ping"}')
        answered = await _wait_for_type(ws, "pong", 5)
        still_open = ws.close_code is None
    ignored = st.call(lambda: st.server.ignored_messages) - before
    return {"sent": len(frames), "binary": 50, "ignored": ignored, "ping_answered_after": answered,
            "connection_kept": still_open}


def _bad_frames(port: int, token: str) -> dict[str, Any]:
    """Below the library: garbage bytes, an unmasked frame, invalid UTF-8 in a text frame."""
    cases = {"random bytes": b"\xff" + os.urandom(63),  # 0xff: RSV bits set, so never a partial frame
             "unmasked client frame": _client_frame(0x1, b'{"type":"ping"}', False),
             "invalid utf-8 text": _client_frame(0x1, b"\xff\xfe\xfd"), "reserved opcode 0x3": _client_frame(0x3, b"x")}
    codes = {}
    for name, payload in cases.items():
        with socket.create_connection((LOOPBACK, port), timeout=5) as sock:
            sock.sendall(_handshake_request(port, f"/ws?token={token}"))
            time.sleep(0.05)
            sock.sendall(payload)
            codes[name] = _close_code(_recv_all(sock, 5))
    return {"close_codes": codes}


async def _flood(st: _ServerThread, url: str, token: str, n: int) -> dict[str, Any]:
    before = st.call(lambda: st.server.ignored_messages)
    pings = sum(1 for i in range(n) if i % 10 == 0)
    async with connect(f"{url}?token={token}", close_timeout=5) as ws:
        await ws.recv()
        pongs = 0

        async def count_pongs():
            nonlocal pongs
            async for raw in ws:
                pongs += json.loads(raw).get("type") == "pong"

        reading = asyncio.create_task(count_pongs())
        start = time.monotonic()
        for i in range(n):
            await ws.send('{"type": "ping"}' if i % 10 == 0 else '{"type": "chatter", "i": %d}' % i)
        sent_s = time.monotonic() - start
        deadline = time.monotonic() + 60
        while st.call(lambda: st.server.ignored_messages) - before < n - pings and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        processed_s = time.monotonic() - start
        await asyncio.sleep(0.2)
        reading.cancel()
    return {"messages": n, "pings": pings, "pongs_received": pongs, "send_s": round(sent_s, 3),
            "server_processed_s": round(processed_s, 3), "server_messages_per_s": round(n / processed_s)}


def _half_open(port: int, token: str, n: int, open_timeout_s: float) -> dict[str, Any]:
    """n TCP connections that never finish the handshake (half send nothing, half a partial
    request); the server must close each after open_timeout_s."""
    socks: list[socket.socket] = []
    connected_at: list[float] = []
    closed_after: dict[int, float] = {}
    answered = 0
    baseline = _server_side_sockets(port)

    def harvest(selector: selectors.BaseSelector, timeout_s: float) -> None:
        nonlocal answered
        for key, _ in selector.select(timeout_s):
            try:
                data = key.fileobj.recv(4096)
            except BlockingIOError:
                continue
            except ConnectionResetError:
                data = b""
            if data:
                answered += 1
                continue
            closed_after[key.data] = time.monotonic() - connected_at[key.data]
            selector.unregister(key.fileobj)

    start = time.monotonic()
    try:
        with selectors.DefaultSelector() as selector:
            # In bursts of 50 with a pause: a listen backlog of 100 drops the SYNs of a faster
            # burst, which then wait 1 s to be retried.
            for i in range(n):
                sock = socket.create_connection((LOOPBACK, port), timeout=10)
                if i % 2:
                    sock.sendall(f"GET /ws?token={token} HTTP/1.1\r\nHost: {LOOPBACK}\r\nUpgrade: webs".encode())
                sock.setblocking(False)
                socks.append(sock)
                connected_at.append(time.monotonic())
                selector.register(sock, selectors.EVENT_READ, i)
                if i % 50 == 49:
                    harvest(selector, 0.02)
            connect_s = time.monotonic() - start
            peak = _server_side_sockets(port) - baseline
            deadline = time.monotonic() + open_timeout_s + 10
            while len(closed_after) < n and time.monotonic() < deadline:
                harvest(selector, 0.2)
        after = _server_side_sockets(port) - baseline
    finally:
        for sock in socks:
            sock.close()
    times = sorted(closed_after.values())
    return {"connections": n, "connect_s": round(connect_s, 3), "open_timeout_s": open_timeout_s,
            "closed_by_server": len(closed_after),
            "closed_within_timeout_plus_1s": sum(t <= open_timeout_s + 1.0 for t in times),
            "closed_after_s": {"min": round(times[0], 3), "p50": round(times[len(times) // 2], 3),
                               "max": round(times[-1], 3)} if times else None,
            "got_bytes_before_close": answered,
            "server_side_sockets": {"peak": peak, "after": after}}


async def _abrupt(st: _ServerThread, url: str, port: int, token: str, n: int) -> dict[str, Any]:
    """n clients read a little, then vanish: half abort (library), half RST (raw socket)."""
    before = st.call(lambda: st.server.clients)
    library = [await connect(f"{url}?token={token}") for _ in range(n // 2)]
    raw = []
    for _ in range(n - n // 2):
        reader, writer = await asyncio.open_connection(LOOPBACK, port)
        writer.write(_handshake_request(port, f"/ws?token={token}"))
        raw.append((reader, writer))
    for ws in library:
        await ws.recv()
        await ws.recv()  # a labels message
    for reader, _ in raw:
        await asyncio.wait_for(reader.read(4096), 5)
    peak = st.call(lambda: st.server.clients)
    start = time.monotonic()
    for ws in library:
        ws.transport.abort()
    for _, writer in raw:
        writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()
    cleaned = await asyncio.to_thread(_wait_until, lambda: st.call(lambda: st.server.clients) == before, 10)
    return {"clients": n, "server_clients_peak": peak - before, "server_cleaned_up": cleaned,
            "cleanup_s": round(time.monotonic() - start, 3)}


# --- path traversal -----------------------------------------------------------------------

TRAVERSAL_PATHS = (
    "/../secret.txt", "/..%2fsecret.txt", "/%2e%2e/secret.txt", "/%2e%2e%2fsecret.txt", "/%2E%2E%2Fsecret.txt",
    "/.%2e/secret.txt", "/%2e./secret.txt", "/..%5csecret.txt", "/..\\secret.txt", "/%252e%252e/secret.txt",
    "/..%252fsecret.txt", "/%c0%ae%c0%ae/secret.txt", "/..%c0%afsecret.txt", "/....//secret.txt",
    "/..;/secret.txt", "/index.html/../../secret.txt", "/sub/../../secret.txt", "/leak.txt", "/up/secret.txt",
    "/up/", "/secret.txt", "//etc/passwd", "/%2fetc/passwd", "/%2Fetc%2Fpasswd",
    "/../../../../../../../../etc/passwd", "/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    "/..%2f..%2f..%2f..%2fetc%2fpasswd", "/etc/passwd%00.html", "/index.html%00", "/index.html%00.png",
    "/%00", "/..", "/.", "/./index.html", "/proc/self/environ", "/%2e%2e/%2e%2e/proc/self/environ",
    "http://127.0.0.1/../secret.txt", "/~/secret.txt", "/%7e/secret.txt",
)


def traversal(paths: tuple[str, ...] = TRAVERSAL_PATHS) -> dict[str, Any]:
    """Each path as a raw HTTP GET against the page server of a throwaway web root, beside which
    lies a secret (and inside which symlinks point out): all 404, no secret in any answer."""
    marker = "TRAVERSAL-" + secrets.token_hex(8)
    with tempfile.TemporaryDirectory(prefix="c2p-drill-") as tmp:
        root = Path(tmp)
        web = root / "web"
        web.mkdir()
        (web / "index.html").write_text("<p>drill</p>")
        (root / "secret.txt").write_text(marker)
        (web / "leak.txt").symlink_to(root / "secret.txt")
        (web / "up").symlink_to(root)
        with _ServerThread(web_root=web) as st:
            index_status, _ = st.run(_http_get(st.server.port, "/"))

            async def probe_all():
                return [await _http_get(st.server.port, path) for path in paths]

            answers = st.run(probe_all())
    statuses = {path: status for path, (status, _) in zip(paths, answers)}
    leaks = [path for path, (_, raw) in zip(paths, answers)
             if marker.encode() in raw or b"root:" in raw or b"PATH=" in raw]
    return {"requests": len(paths), "index_status": index_status, "statuses": statuses,
            "all_404": all(status == 404 for status in statuses.values()),
            "not_404": {p: s for p, s in statuses.items() if s != 404}, "leaks": leaks}


# --- fuzzing ------------------------------------------------------------------------------

def _json_text(st):
    scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
    values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["type", "x", "schema"]) | st.text(max_size=4), st.sampled_from(["ping", "PING"]) | inner,
        max_size=3), max_leaves=12)
    return values.map(json.dumps)


def fuzz_client_messages(n_examples: int = 5000, seed: int = 0) -> dict[str, Any]:
    """handle_client_message on random text, bytes, JSON and near-JSON: it returns the pong
    exactly for a JSON object whose type is "ping", None otherwise, and never raises."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import seed as fix_seed
    from hypothesis import strategies as st

    counts = {"examples": 0, "pongs": 0}
    frames = st.one_of(
        st.text(), st.binary(), _json_text(st),
        st.integers(1, 20_000).map(lambda n: "[" * n), st.integers(4000, 6000).map(lambda n: "9" * n),
        st.sampled_from(['{"type": "ping"}', '{"type":"ping","type":"x"}', '{"type": "ping", "id": 1}', "NaN",
                         "Infinity", '{"type": "ping"} trailing', "\ufeff{}", "1e999999"]))

    @fix_seed(seed)
    @settings(max_examples=n_examples, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(frames)
    def check(raw: str | bytes) -> None:
        counts["examples"] += 1
        reply = handle_client_message(raw)
        try:
            message = json.loads(raw) if isinstance(raw, str) else None
        except (ValueError, RecursionError):
            message = None
        expected = PONG if isinstance(message, dict) and message.get("type") == "ping" else None
        assert reply == expected, (raw[:80], reply)
        counts["pongs"] += reply is not None

    return _run_fuzz(check, counts)


def _config_strategy(st, cls: type):
    """Mappings shaped like `cls` (known keys, plausible and junk values, unknown keys), so
    that the loader's checks are reached at every depth."""
    scalars = (st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10)
               | st.sampled_from(["1e-3", " 0.5 ", "-.5", "1_000", "nan", "inf", "\u0661", "1e999", "true", ""]))
    junk = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                        | st.dictionaries(st.text(max_size=6) | st.integers(), inner, max_size=3), max_leaves=6)

    def plausible(tp):
        origin, args = get_origin(tp), get_args(tp)
        if dataclasses.is_dataclass(tp):
            return _config_strategy(st, tp)
        if origin is Literal:
            return st.sampled_from(args)
        if origin is list:
            return st.lists(plausible(args[0]), max_size=3)
        if origin in (Union, types.UnionType):
            return st.one_of(*(plausible(a) for a in args))
        if tp is type(None):
            return st.none()
        return {int: st.integers(), float: st.floats() | st.integers(), str: st.text(max_size=10),
                bool: st.booleans()}.get(tp, junk)

    hints = get_type_hints(cls)
    # Mostly plausible values, so that whole valid configs come up too, not only the first error.
    def mostly(good):  # 7 in 8 draws plausible
        return st.sampled_from([True] * 7 + [False]).flatmap(lambda ok: good if ok else junk)

    values = {f.name: mostly(plausible(hints[f.name])) for f in dataclasses.fields(cls)}
    required = {f.name for f in dataclasses.fields(cls)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
    known = st.fixed_dictionaries({name: values[name] for name in required},
                                  optional={name: v for name, v in values.items() if name not in required})
    extra = st.dictionaries(st.text(max_size=8) | st.integers(), junk, min_size=1, max_size=2)
    with_extra = st.tuples(known, extra).map(lambda pair: {**pair[0], **pair[1]})
    return st.sampled_from([True] * 7 + [False]).flatmap(lambda ok: known if ok else with_extra)


def fuzz_config_loader(n_examples: int = 5000, seed: int = 0) -> dict[str, Any]:
    """config.from_dict(RunConfig, data) and load_config on the same data as YAML: a RunConfig
    or a ConfigError, never another exception. Also probes an int of 5000 digits (too long for
    repr() and for PyYAML's int(), which once let a plain ValueError out)."""
    import yaml
    from hypothesis import HealthCheck, given, settings
    from hypothesis import seed as fix_seed
    from hypothesis import strategies as st

    from c2p_stream.config import ConfigError, RunConfig, from_dict, load_config

    counts = {"examples": 0, "accepted": 0, "config_errors": 0, "yaml_files": 0}
    with tempfile.TemporaryDirectory(prefix="c2p-drill-") as tmp:
        path = Path(tmp) / "run.yaml"

        @fix_seed(seed)
        @settings(max_examples=n_examples, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(_config_strategy(st, RunConfig) | st.recursive(st.none() | st.integers() | st.text(max_size=5),
                                                               lambda inner: st.lists(inner, max_size=3)))
        def check(data: Any) -> None:
            counts["examples"] += 1
            try:
                config = from_dict(RunConfig, data)
                assert isinstance(config, RunConfig)
                counts["accepted"] += 1
            except ConfigError:
                counts["config_errors"] += 1
            if counts["examples"] % 4:  # the YAML path is slow: one example in four
                return
            try:
                text = yaml.safe_dump(data)
            except yaml.YAMLError:  # e.g. a key YAML cannot write
                return
            path.write_text(text)
            counts["yaml_files"] += 1
            try:
                load_config(path)
            except ConfigError:
                pass

        figures = _run_fuzz(check, counts)
        probes = {}
        for name, run in (("from_dict", lambda: from_dict(RunConfig, {"corpus": {}, "cache_dir": 10 ** 5000})),
                          ("load_config", lambda: (path.write_text("corpus: {}\ncache_dir: " + "9" * 5000 + "\n"),
                                                   load_config(path)))):
            try:
                run()
                probes[name] = "accepted"
            except ConfigError:
                probes[name] = "ConfigError"
            except Exception as err:  # what the probe is for
                probes[name] = f"{type(err).__name__} escapes: {str(err)[:80]}"
    figures["huge_int_probe"] = probes
    return figures


def _run_fuzz(check: Callable[[], None], counts: dict[str, int]) -> dict[str, Any]:
    start = time.monotonic()
    failure = None
    try:
        check()
    except Exception as err:  # hypothesis re-raises the shrunk failing example's error
        failure = f"{type(err).__name__}: {str(err)[:300]}"
    return {**counts, "failure": failure, "seconds": round(time.monotonic() - start, 2)}
