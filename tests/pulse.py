"""A private PulseAudio server for tests: a virtual microphone that plays files.

The server has one null sink, `vsink`; its monitor, `vsink.monitor`, is the default
source, so whatever `play()` sends to the sink is what a recording client hears.
PortAudio reaches it through ALSA's pulse plugin: `$HOME/.asoundrc` (a private HOME)
makes ALSA's `default` device PulseAudio, and PULSE_SERVER points at the private socket.
Run audio clients in a subprocess with `env=server.env`: ALSA and PortAudio read their
configuration once per process.

    with PulseServer() as server:
        client = subprocess.Popen([...], env=server.env)
        server.play("tone.wav")
        server.kill()  # the "device lost" drill

Works as root (pulseaudio warns and runs as a per-user daemon with --disallow-exit) and
as a normal user; nothing outside a fresh temporary directory is touched.
"""

from __future__ import annotations

import ctypes.util
import glob
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

SINK = "vsink"
ASOUNDRC = "pcm.!default { type pulse }\nctl.!default { type pulse }\n"


def missing() -> str | None:
    """Why the virtual microphone cannot run here (a skip reason), or None."""
    tools = [t for t in ("pulseaudio", "pactl", "paplay") if shutil.which(t) is None]
    if tools:
        return f"{', '.join(tools)} not installed (apt-get install pulseaudio pulseaudio-utils)"
    plugin = "alsa-lib/libasound_module_pcm_pulse.so"
    if not glob.glob(f"/usr/lib*/{plugin}") + glob.glob(f"/usr/lib*/*/{plugin}"):
        return "ALSA pulse plugin not installed (apt-get install libasound2-plugins)"
    if ctypes.util.find_library("portaudio") is None:
        return "PortAudio not installed (apt-get install libportaudio2)"
    return None


class PulseServer:
    """A PulseAudio daemon in a temporary directory; `env` reaches it (and ALSA through it)."""

    def __init__(self, sink_rate_hz: int = 48000):
        # Unix socket paths are limited to 108 bytes, so a short /tmp directory, not pytest's tmp_path.
        self.root = Path(tempfile.mkdtemp(prefix="c2p-pulse-"))
        self.socket = self.root / "native"
        self.log = self.root / "pulseaudio.log"
        self.sink_rate_hz = sink_rate_hz
        home, run = self.root / "home", self.root / "run"
        self.env = {
            **os.environ,
            "HOME": str(home),
            "XDG_CONFIG_HOME": str(home / ".config"),
            "XDG_RUNTIME_DIR": str(run),
            "PULSE_RUNTIME_PATH": str(run / "pulse"),
            "PULSE_STATE_PATH": str(self.root / "state"),
            "PULSE_SERVER": f"unix:{self.socket}",
        }
        self.process: subprocess.Popen | None = None
        self._players: list[subprocess.Popen] = []

    def start(self, timeout_s: float = 15.0) -> PulseServer:
        for name in ("home/.config", "run/pulse", "state"):
            (self.root / name).mkdir(parents=True, exist_ok=True)
        (self.root / "run").chmod(0o700)
        (self.root / "home" / ".asoundrc").write_text(ASOUNDRC)
        command = [
            "pulseaudio", "--daemonize=no", "--exit-idle-time=-1", "--disallow-exit", "-n",
            "--use-pid-file=no", "--disable-shm=yes", "--log-target=stderr",
            f"--load=module-native-protocol-unix socket={self.socket} auth-anonymous=1",
            f"--load=module-null-sink sink_name={SINK} rate={self.sink_rate_hz}",
            "--load=module-always-sink",
        ]
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(command, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while self.pactl("info").returncode != 0:
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"pulseaudio did not start; log:\n{self.log_tail()}")
            time.sleep(0.1)
        self.pactl("set-default-source", f"{SINK}.monitor", check=True)
        return self

    def pactl(self, *args: str, check: bool = False) -> subprocess.CompletedProcess:
        return subprocess.run(["pactl", *args], env=self.env, capture_output=True, text=True, check=check, timeout=10)

    def play(self, path: str | Path) -> subprocess.Popen:
        """Start playing `path` into the null sink (= the default source); returns the paplay process."""
        player = subprocess.Popen(["paplay", f"--device={SINK}", str(path)], env=self.env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self._players.append(player)
        return player

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Take the server down as a crash (SIGKILL) or a shutdown (SIGTERM) would, or freeze
        it (SIGSTOP: clients stay connected and simply stop getting samples)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            if sig != signal.SIGSTOP:
                self.process.wait(10)

    def log_tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """Stop players and the daemon, remove the directory; safe to call twice."""
        for proc in [*self._players, self.process]:
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGCONT)  # a frozen server could not act on SIGTERM
                proc.terminate()
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
        self._players.clear()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PulseServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
