"""`c2p-stream`: wire a source (mic or file) -> Engine -> dashboard, websocket feed, JSONL.

Threads: the audio source and the engine run in a worker thread (paced input goes
through a LiveRunner, which labels the newest window and counts skipped hops); the
asyncio loop on the main thread runs the websocket feed and handles SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import threading
from contextlib import ExitStack
from pathlib import Path
from typing import Callable

from c2p_stream.audio import AudioError
from c2p_stream.checkpoint import CheckpointError, load_checkpoint
from c2p_stream.dashboard import Dashboard
from c2p_stream.engine import Engine, LiveRunner
from c2p_stream.events import LabelEvent, end_message, hello_message
from c2p_stream.features import FrontEndError, build_front_end
from c2p_stream.feed import FeedServer
from c2p_stream.sources import MicSource, SourceError, SourceLost, file_chunks, list_devices, resolve_input_device

ASSETS = Path(__file__).resolve().parent / "assets"
DEMO_CHECKPOINT = ASSETS / "demo_checkpoint"
DEMO_AUDIO = ASSETS / "demo_speech.flac"
CHUNK_S = 0.1  # source chunk: 100 ms


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.list_devices:
            print(list_devices())
            return 0
        return asyncio.run(_stream(args))
    except (CheckpointError, AudioError, SourceError, FrontEndError, OSError, ValueError) as err:
        print(f"c2p-stream: error: {err}", file=sys.stderr)
        return 2


async def _stream(args: argparse.Namespace) -> int:
    checkpoint_dir = Path(args.checkpoint) if args.checkpoint else DEMO_CHECKPOINT
    if args.checkpoint is None:
        print(f"c2p-stream: using the demo model ({checkpoint_dir}), trained on synthetic speech; "
              "pass --checkpoint for a real one", file=sys.stderr)
    checkpoint = load_checkpoint(checkpoint_dir)
    overrides = {"device": args.device, "dtype": args.dtype}
    if args.front_end_model:
        overrides["model"] = args.front_end_model
    front_end = build_front_end(checkpoint.front_end_config(**overrides))
    engine = Engine(checkpoint, front_end, speech_threshold_dbfs=args.speech_threshold_dbfs, smoothing=args.smoothing)
    source_name, open_source = _source(args)
    model_name = checkpoint.info.get("name", checkpoint_dir.name)

    with ExitStack() as stack:
        sinks: list[Callable[[LabelEvent], None]] = []
        dashboard = None
        if not args.no_dashboard:
            names = {a: [c.name for c in h.clusters] for a, h in checkpoint.heads.items()}
            dashboard = Dashboard(model_name, source_name, cluster_names=names)
            sinks.append(dashboard.update)
        elif not args.quiet:
            sinks.append(_print_event)
        if args.jsonl:
            jsonl = stack.enter_context(open(args.jsonl, "w", encoding="utf-8"))
            sinks.append(lambda event: (jsonl.write(json.dumps(event.to_message()) + "\n"), jsonl.flush()))
        # From here on SIGINT/SIGTERM only set `stop`: clients already connected (e.g. while
        # waiting for --wait-clients) still get `end` and close code 1001.
        stop = threading.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
            stack.callback(loop.remove_signal_handler, sig)
        feed = None
        if not args.no_ws:
            feed = FeedServer(args.ws_host, args.ws_port, hello=hello_message(checkpoint.describe()), token=args.token,
                              allowed_origins=args.allowed_origin or None, queue_size=args.client_queue,
                              log=lambda message: print(f"c2p-stream: {message}", file=sys.stderr))
            await feed.start()
            print(f"c2p-stream: feed on {feed.url} (web page: {feed.http_url})", file=sys.stderr)
            sinks.append(lambda event: feed.publish_threadsafe(event.to_message()))
            while feed.clients < args.wait_clients and not stop.is_set():
                await asyncio.sleep(0.05)

        await asyncio.to_thread(engine.warm_up)
        source = await asyncio.to_thread(open_source)  # _run_source ends at once if `stop` is set
        if dashboard is not None:
            dashboard.start()
        clients_task = asyncio.create_task(_show_clients(feed, dashboard)) if feed and dashboard else None
        try:
            reason = await asyncio.to_thread(_run_source, engine, source, sinks, stop, args)
        finally:
            if clients_task:
                clients_task.cancel()
        if feed is not None:
            feed.publish(end_message(reason))
            await feed.close(reason)
        if dashboard is not None:
            dashboard.end(reason)
            dashboard.stop()
    if reason.startswith("source lost"):
        print(f"c2p-stream: {reason}", file=sys.stderr)
        return 1
    return 0


def _source(args: argparse.Namespace):
    """(description, opener) for the chosen input; a file is read and checked here, up front."""
    if args.mic:
        device = resolve_input_device(args.input_device)
        return f"mic {args.input_device or 'default'}", lambda: MicSource(device, chunk_s=CHUNK_S)
    path = Path(args.file) if args.file else DEMO_AUDIO
    chunks = file_chunks(path, chunk_s=CHUNK_S, realtime=not args.fast)
    return f"file {path.name}", lambda: chunks


def _run_source(engine: Engine, source, sinks, stop: threading.Event, args) -> str:
    """Feed the source through the engine until it ends, is lost, or `stop` is set; returns the end reason."""
    def dispatch(event: LabelEvent) -> None:
        for sink in sinks:
            sink(event)

    mic = source if isinstance(source, MicSource) else None
    if mic is None and args.fast:  # batch analysis: no pacing, every window labelled
        for chunk in source:
            if stop.is_set():
                return "shutdown"
            for event in engine.process(chunk):
                dispatch(event)
        return "eof"
    runner = LiveRunner(engine, [dispatch], source=mic, inject_delay_s=args.inject_delay_s).start()
    try:
        for chunk in source:
            if stop.is_set():
                return "shutdown"
            runner.feed(chunk)
        return "eof"
    except SourceLost as err:
        return f"source lost: {err}"
    finally:
        runner.close(drain=not stop.is_set())
        if mic is not None:
            mic.close()


async def _show_clients(feed: FeedServer, dashboard: Dashboard) -> None:
    while True:
        dashboard.set_clients(feed.clients)
        await asyncio.sleep(0.5)


def _print_event(event: LabelEvent) -> None:
    if event.speech:
        text = (f"A{event.arousal.cluster + 1} {event.arousal.name:<14} V{event.valence.cluster + 1} "
                f"{event.valence.name:<14} {event.pairing} {event.direction}")
    else:
        text = "no speech"
    print(f"{event.start_s:7.1f}-{event.end_s:<7.1f} {text}  ({event.latency_ms:.0f} ms)", flush=True)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="c2p-stream",
        description="Label live speech every second with arousal/valence contour clusters (C2P).",
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--mic", action="store_true", help="listen to a microphone")
    source.add_argument("--file", metavar="PATH", help="analyse an audio file (paced in real time unless --fast)")
    source.add_argument("--demo", action="store_true", help="the demo model on the shipped speech sample (default)")
    parser.add_argument("--list-devices", action="store_true", help="list audio input devices and exit")
    parser.add_argument("--input-device", metavar="NAME|INDEX", help="microphone to use (default: the system's)")
    parser.add_argument("--fast", action="store_true", help="with --file: process as fast as possible")
    parser.add_argument("--checkpoint", metavar="DIR", help="trained model (default: the shipped demo model)")
    parser.add_argument("--front-end-model", metavar="DIR|ID", help="where the Wav2Vec2 weights are, if moved")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16"), default="auto",
                        help="auto: fp16 on CUDA, bf16 on CPUs with native bf16, else fp32")
    parser.add_argument("--speech-threshold-dbfs", type=float, default=-50.0,
                        help="windows quieter than this are marked 'no speech' (default -50)")
    parser.add_argument("--smoothing", type=float, default=0.0,
                        help="weight of the past in an EMA of probabilities across hops, 0..1 (default 0: off)")
    parser.add_argument("--jsonl", metavar="PATH", help="also write every event as one JSON line")
    parser.add_argument("--no-dashboard", action="store_true", help="no terminal dashboard (prints one line per hop)")
    parser.add_argument("--quiet", action="store_true", help="with --no-dashboard: print nothing per hop")
    parser.add_argument("--no-ws", action="store_true", help="no websocket feed")
    parser.add_argument("--ws-host", default="127.0.0.1", help="feed address (default 127.0.0.1, loopback only)")
    parser.add_argument("--ws-port", type=int, default=8765, help="feed port (default 8765; 0 picks a free one)")
    parser.add_argument("--token", help="clients must present this token (?token=... or Authorization: Bearer)")
    parser.add_argument("--allowed-origin", action="append", metavar="ORIGIN",
                        help="accept browser connections only from this Origin (repeatable)")
    parser.add_argument("--client-queue", type=int, default=256,
                        help="messages kept per slow client before its oldest are dropped (default 256)")
    parser.add_argument("--wait-clients", type=int, default=0, metavar="N",
                        help="wait until N feed clients are connected before starting")
    parser.add_argument("--inject-delay-s", type=float, default=0.0, help=argparse.SUPPRESS)  # reliability drills
    return parser


if __name__ == "__main__":
    sys.exit(main())
