"""Bounded versions of the feed's reliability drills (issue 6), on 127.0.0.1 only.

Sizes are the issue's where they are cheap (200 clients, 1000 half-open connections, 10k
flood messages); the fan-out replays 200 s of stream at a 0.1 s hop with a 2 s stall timeout.
No assertion on raw speed beyond the issue's own criteria, loosened for a shared CI machine.
"""

import asyncio
import json
import socket
import time

import pytest

from c2p_stream.config import load_config, ConfigError, RunConfig, from_dict
from c2p_stream.drills.feed import (
    HELLO,
    _handshake_request,
    _label_message,
    attacks,
    fan_out,
    fuzz_client_messages,
    fuzz_config_loader,
    graceful_shutdown,
    traversal,
)
from c2p_stream.feed import FeedServer
from websockets.asyncio.client import connect

WRITE_LIMIT_BYTES = 32 * 1024  # websockets' default write buffer high-water mark


def test_fan_out_200_clients_readers_get_everything_non_readers_stay_bounded_and_are_dropped():
    figures = fan_out(200, non_readers=10, droppers=10, stream_s=200, hop_s=0.1, infer_ms=20,
                      baseline_s=100, stall_timeout_s=2.0)
    print(json.dumps(figures))
    clients, delivery, bounds = figures["clients"], figures["delivery"], figures["non_reader_bounds"]
    assert clients["all_connected_before_stream"] and clients["all_gone_after"]
    assert clients["server_clients_during_stream"]["min"] >= clients["readers"] == 180
    assert delivery["readers_complete"] == delivery["readers"] == 180  # 100% of labels, in order, then end
    assert delivery["missing_labels"] == delivery["gap_messages"] == delivery["out_of_order_steps"] == 0
    assert delivery["client_tasks_timed_out"] == 0
    assert delivery["latency_ms"]["n"] == 180 * delivery["labels_published"] > 0

    assert bounds["max_queued"] <= bounds["queue_size"]
    assert bounds["max_buffered_bytes"] <= WRITE_LIMIT_BYTES + 2 * figures["stream"]["message_bytes"]
    assert bounds["dropped"] == bounds["stalled_clients"] == 10
    assert all(row["dropped_by"] == "stall timeout" for row in figures["non_readers"])

    droppers = figures["droppers"]
    assert droppers["cycles"] >= 10 and all(count > 0 for count in droppers["modes"].values())
    assert droppers["discontinuities"] == droppers["errors"] == 0

    hop = figures["engine_hop_latency_ms"]  # the issue asks for 1.2x at the real 1 s hop
    assert hop["p99_ratio"] is not None and hop["p99_ratio"] <= 2.0, hop


def test_a_client_that_stops_reading_is_dropped_after_the_stall_timeout():
    """websockets' keepalive cannot drop it (its ping waits on the same full buffer); the feed does."""
    logs = []

    async def main():
        server = FeedServer(port=0, hello=HELLO, queue_size=8, stall_timeout_s=0.5, log=logs.append)
        await server.start()
        stuck = socket.socket()
        stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stuck.connect(("127.0.0.1", server.port))
        stuck.sendall(_handshake_request(server.port))
        try:
            async with connect(server.url) as reader:
                await reader.recv()
                seqs = []

                async def read():
                    async for raw in reader:
                        seqs.append(json.loads(raw)["seq"])

                reading = asyncio.create_task(read())
                deadline = time.monotonic() + 20
                sent = 0
                while server.stalled_clients == 0 and time.monotonic() < deadline:
                    server.publish(_label_message(sent, time.monotonic()))
                    sent += 1
                    await asyncio.sleep(0.005)
                    assert all(s["queued"] <= 8 for s in server.client_stats())
                assert server.stalled_clients == 1
                while server.clients != 1 and time.monotonic() < deadline:  # the abort lands
                    await asyncio.sleep(0.005)
                assert server.clients == 1  # the reader only
                while len(seqs) < sent and time.monotonic() < deadline:
                    await asyncio.sleep(0.01)
                reading.cancel()
                assert seqs == list(range(sent))
        finally:
            stuck.close()
            await server.close()

    asyncio.run(main())
    assert any("dropped client 127.0.0.1:" in line and "no data for 0.5 s" in line for line in logs)


@pytest.mark.parametrize("phase", ["streaming", "waiting"])
def test_sigterm_with_200_clients_every_client_gets_end_then_1001(phase):
    figures = graceful_shutdown(200, phase=phase)
    print(json.dumps(figures))
    assert figures["returncode"] == 0 and not figures["traceback_in_stderr"]
    assert figures["exit_within_bound"], figures["exit_s"]  # close timeout + 1 s
    assert figures["clients_open_at_term"] == 200
    assert figures["close_codes"] == {"1001": 200}
    assert figures["clients_end_shutdown_then_1001"] == 200
    if phase == "streaming":
        assert figures["min_labels_before_term"] >= 2


def test_attacks_are_refused_and_the_witness_misses_nothing():
    figures = attacks(n_half_open=1000, flood_messages=10_000, n_abrupt=50, open_timeout_s=2.0, hop_s=0.05)
    print(json.dumps(figures))
    phases = figures["phases"]

    auth = phases["auth"]
    assert auth["all_as_expected"], auth["cases"]  # 401 before the handshake, 403 for a foreign Origin
    assert auth["accepted_start_with_hello"] and auth["every_offer_compared"]
    assert auth["raw_bad_token"]["status_line"].startswith("HTTP/1.1 401")
    assert not auth["raw_bad_token"]["labels_in_response"]
    assert not any(case.get("labels_in_response") for case in auth["cases"])
    token = figures["token"]
    assert token["log_records_checked"] > 1000 and token["occurrences_in_logs"] == 0, token["leaks"]

    assert phases["oversize"]["over_limit_close_code"] == 1009 and phases["oversize"]["at_limit_answered"]
    junk = phases["junk"]
    assert junk["ignored"] == junk["sent"] and junk["ping_answered_after"] and junk["connection_kept"]
    assert phases["bad_frames"]["close_codes"] == {"random bytes": 1002, "unmasked client frame": 1002,
                                                   "invalid utf-8 text": 1007, "reserved opcode 0x3": 1002}
    flood = phases["flood"]
    assert flood["pongs_received"] > 0 and flood["server_processed_s"] < 60

    half_open = phases["half_open"]
    assert half_open["closed_by_server"] == 1000 and half_open["got_bytes_before_close"] == 0
    assert half_open["closed_after_s"]["min"] >= 2.0 - 0.05  # by the open timeout, not before
    assert half_open["closed_after_s"]["max"] <= 2.0 + 3.0  # loose: a busy CI machine
    assert half_open["server_side_sockets"]["after"] == 0
    assert phases["abrupt"]["server_cleaned_up"]

    witness = figures["witness"]
    assert witness["complete_in_order"] and witness["received"] == witness["published"] > 0
    assert witness["gap_messages"] == 0 and witness["end"] == "shutdown" and witness["close_code"] == 1001
    fds = figures["fds"]
    assert fds["returned_to_baseline"] and fds["after_attacks"] == fds["baseline"]
    assert fds["after_close"] == fds["before_server"]
    assert figures["server"]["clients_back_to_witness_only"]


def test_traversal_urls_all_404_and_nothing_leaks():
    figures = traversal()
    assert figures["index_status"] == 200
    assert figures["all_404"], figures["not_404"]
    assert figures["leaks"] == []


def test_fuzz_client_message_handler():
    figures = fuzz_client_messages(3000)
    assert figures["failure"] is None
    assert figures["examples"] == 3000 and figures["pongs"] > 0


def test_fuzz_config_loader_raises_only_config_error():
    figures = fuzz_config_loader(2000)
    assert figures["failure"] is None
    assert figures["examples"] == 2000 and figures["accepted"] > 0 and figures["config_errors"] > 0
    assert figures["yaml_files"] > 0


def test_config_loader_reports_a_huge_int_as_config_error(tmp_path):
    with pytest.raises(ConfigError):
        from_dict(RunConfig, {"corpus": {}, "cache_dir": 10 ** 5000})
    path = tmp_path / "huge.yaml"
    path.write_text("corpus: {kind: synthetic}\nmodel: {k: " + "9" * 5000 + "}\n")
    with pytest.raises(ConfigError, match="huge.yaml"):
        load_config(path)
