"""Reliability drills: `python -m c2p_stream.drills [--quick] [--only NAME ...]`.

Runs every drill of the reliability issue at its full size (about 35 minutes; `--quick`:
the bounded sizes the test suite uses) and prints one JSON object per drill to stdout as
it finishes, then a summary. All traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from c2p_stream.drills import engine, feed

# name -> (function, full-size kwargs, quick kwargs)
DRILLS = {
    "fan_out": (feed.fan_out, {"stream_s": 600.0},
                {"stream_s": 200.0, "hop_s": 0.1, "infer_ms": 20.0, "baseline_s": 100.0, "stall_timeout_s": 2.0}),
    "graceful_shutdown": (feed.graceful_shutdown, {"n_clients": 200}, {"n_clients": 200}),
    "graceful_shutdown_waiting": (feed.graceful_shutdown, {"n_clients": 200, "phase": "waiting"},
                                  {"n_clients": 200, "phase": "waiting"}),
    "attacks": (feed.attacks, {}, {}),
    "traversal": (feed.traversal, {}, {}),
    "fuzz_client_messages": (feed.fuzz_client_messages, {"n_examples": 5000}, {"n_examples": 3000}),
    "fuzz_config_loader": (feed.fuzz_config_loader, {"n_examples": 5000}, {"n_examples": 2000}),
    "soak": (engine.soak, {"audio_s": 3600.0}, {"audio_s": 300.0}),
    "falling_behind": (engine.falling_behind, {"delay_s": 1.5}, {"delay_s": 1.5, "slow_s": 8.0, "recover_s": 6.0}),
    "device_loss": (engine.device_loss, {"repeats": 10}, {"repeats": 1}),
    "capture_lag": (engine.capture_lag, {"stall_s": 3.0}, {"stall_s": 3.0}),
    "training_killed": (engine.training_killed, {"kills": 12}, {"kills": 2}),
    "corruption": (engine.corruption, {}, {}),
    "bad_audio": (engine.bad_audio, {"audio_s": 300.0}, {"audio_s": 120.0}),
    "bad_corpora": (engine.bad_corpora, {}, {}),
    "security": (engine.security, {}, {}),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m c2p_stream.drills", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="bounded sizes (minutes), as in the test suite")
    parser.add_argument("--only", nargs="+", choices=sorted(DRILLS), metavar="NAME",
                        help=f"run only these drills: {', '.join(DRILLS)}")
    args = parser.parse_args(argv)
    failed = []  # drills that check their own criteria report "passed"; the feed drills report figures
    for name in args.only or DRILLS:
        function, full, quick = DRILLS[name]
        kwargs = quick if args.quick else full
        print(f"drill {name} {kwargs} ...", file=sys.stderr, flush=True)
        started = time.monotonic()
        try:
            figures = function(**kwargs)
            ok = bool(figures.get("passed", True))
        except Exception as err:  # noqa: BLE001 - a failing drill is reported, the others still run
            figures, ok = {"error": f"{type(err).__name__}: {err}"}, False
        if not ok:
            failed.append(name)
        print(json.dumps({"drill": name, "ok": ok, "seconds": round(time.monotonic() - started, 1),
                          "figures": figures}, default=str), flush=True)
    print(json.dumps({"summary": {"ran": len(args.only or DRILLS), "failed": failed}}), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
