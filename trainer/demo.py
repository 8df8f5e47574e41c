"""Rebuild the demo assets shipped in the package: `python -m trainer.demo`.

Trains `configs/demo.yaml` (synthetic corpus, log-mel front end) into a run directory,
copies its checkpoint to `c2p_stream/assets/demo_checkpoint`, and writes a held-out
synthetic speech sample to `c2p_stream/assets/demo_speech.flac` for `c2p-stream --demo`.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import soundfile as sf

from c2p_stream.audio import SAMPLE_RATE_HZ
from c2p_stream.checkpoint import load_checkpoint, save_checkpoint
from c2p_stream.cli import DEMO_AUDIO, DEMO_CHECKPOINT
from trainer import cli
from trainer.synthetic import synthesize_session

REPO = Path(__file__).resolve().parents[1]
SAMPLE_SECONDS = 40.0
SAMPLE_SEED = 2026  # not one of the corpus' session seeds (those derive from SeedSequence(seed, split, index))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "configs" / "demo.yaml"))
    parser.add_argument("--out", default=str(REPO / "runs" / "demo"), help="run directory (default runs/demo)")
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args(argv)
    train_args = ["--config", args.config, "--out", args.out] + (["--resume"] if args.resume else [])
    if (code := cli.main(train_args)) != 0:
        return code
    save_checkpoint(load_checkpoint(Path(args.out) / "checkpoint"), DEMO_CHECKPOINT)
    sample = synthesize_session(SAMPLE_SECONDS, SAMPLE_SEED, name="demo", split="demo")
    tmp = DEMO_AUDIO.with_name(f".{DEMO_AUDIO.name}.tmp")
    sf.write(tmp, sample.audio, SAMPLE_RATE_HZ, format="FLAC", subtype="PCM_16")
    shutil.move(tmp, DEMO_AUDIO)
    print(f"demo assets: {DEMO_CHECKPOINT} and {DEMO_AUDIO}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
