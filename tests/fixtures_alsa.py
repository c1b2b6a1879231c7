"""An ALSA capture device with no sound card, for tests through the real PortAudio path.

``alsa_device(samples, rate)`` writes the samples as raw S16_LE and an ALSA
configuration with

    pcm.<name> = plug -> file (infile = the raw file) -> null

and returns the environment (``ALSA_CONFIG_PATH`` = the system alsa.conf
plus ours) for a subprocess: PortAudio reads the ALSA configuration when it
initialises (when sounddevice is imported), so capture always runs in a
child process started with this environment.

The ``file`` device has no clock: it delivers as fast as it is read, and
past the end of its input it repeats stale data. So the raw file must cover
the whole capture, and the capture stops by sample count
(``python -m edge run --duration S``) with a ring buffer large enough to
hold all of it.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest

SYSTEM_ALSA_CONF = Path(os.environ.get("ALSA_CONFIG_DIR", "/usr/share/alsa")) / "alsa.conf"
REPO = Path(__file__).resolve().parent.parent


def to_s16(samples: np.ndarray) -> bytes:
    x = np.asarray(samples, dtype=np.float32)
    return np.clip(np.round(x * 32768), -32768, 32767).astype("<i2").tobytes()


def pcm_block(name: str, infile: Path | str, rate: int, channels: int = 1, description: str = "") -> str:
    # the helper PCMs' names must not contain ``name``: devices are matched by part of their name
    slave = "s" + hashlib.sha1(name.encode()).hexdigest()[:10]
    return f"""
pcm.{slave}n {{ type null }}
pcm.{slave}f {{
    type file
    slave.pcm "{slave}n"
    file "/dev/null"
    infile "{infile}"
    format "raw"
}}
pcm.{name} {{
    type plug
    slave {{ pcm "{slave}f" format S16_LE rate {rate} channels {channels} }}
    hint {{ show on description "{description or name}" }}
}}
"""


def core_alsa_conf(dest: Path) -> Path:
    """The system alsa.conf without its first hook, which pulls in every installed plugin's
    configuration (/etc/alsa/conf.d: a52, jack, oss, lavrate, ...) and /etc/asound.conf:
    ALSA as a recorder with no desktop plugins has it. PortAudio opens every PCM defined
    when it starts, so each plugin defined costs the process its libraries."""
    text = SYSTEM_ALSA_CONF.read_text()
    start = text.index("@hooks [")
    depth, i = 0, start
    while True:
        c = text[i]
        depth += c == "["
        depth -= c == "]"
        i += 1
        if c == "]" and depth == 0:
            break
    dest.write_text(text[:start] + text[i:])
    return dest


def alsa_env(conf: Path, base: dict | None = None, core: Path | None = None) -> dict:
    """Environment for a child process whose ALSA sees ``conf`` on top of the system's
    configuration (or of ``core``, a configuration from ``core_alsa_conf``)."""
    env = dict(os.environ if base is None else base)
    env["ALSA_CONFIG_PATH"] = f"{core or SYSTEM_ALSA_CONF}:{conf}"
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


@pytest.fixture
def alsa_device(tmp_path):
    """factory(samples[, rate, name, pad_s]) -> (env, name): a capture device playing ``samples``.

    ``samples`` is (n,) or (n, channels) float in [-1, 1]; ``pad_s`` seconds of
    silence are appended so the device never runs past its input.
    """
    if not SYSTEM_ALSA_CONF.exists():
        pytest.skip(f"no {SYSTEM_ALSA_CONF} (libasound2-data not installed)")
    conf = tmp_path / "asound.conf"
    blocks: list[str] = []

    def make(samples: np.ndarray, rate: int = 32000, name: str = "dcmic", pad_s: float = 5.0):
        x = np.asarray(samples, dtype=np.float32)
        if x.ndim == 1:
            x = x[:, None]
        x = np.concatenate([x, np.zeros((int(pad_s * rate), x.shape[1]), np.float32)])
        raw = tmp_path / f"{name}.raw"
        raw.write_bytes(to_s16(x))
        blocks.append(pcm_block(name, raw, rate, x.shape[1], f"dawnchorus test device {name}"))
        conf.write_text("".join(blocks))
        return alsa_env(conf), name

    return make


# -- a clocked capture device: a PulseAudio null sink's monitor -----------------------
# The file device has no clock. Where a test needs audio at the real rate (device
# loss mid-stream, SIGTERM while listening, the watchdog), a private PulseAudio
# server with a null sink gives one: the test plays into the sink with pacat, and
# the daemon captures its monitor through ALSA's pulse plugin, PortAudio and
# sounddevice, the same path as any ALSA device.
import shutil
import signal
import subprocess
import threading
import time


class PulseServer:
    def __init__(self, root: Path, rate: int = 32000):
        self.root = root
        self.rate = rate
        self.socket = root / "native"
        self.proc: subprocess.Popen | None = None
        self.players: list[subprocess.Popen] = []
        self.conf = root / "asound-pulse.conf"
        self.conf.write_text(f"""
pcm.dcpulse {{
    type pulse
    server "unix:{self.socket}"
    device "dc.monitor"
    hint {{ show on description "dawnchorus test pulse monitor" }}
}}
""")

    @property
    def env(self) -> dict:
        return alsa_env(self.conf)

    def core_env(self) -> dict:
        """As ``env``, without the system's plugin configurations (see ``core_alsa_conf``)."""
        return alsa_env(self.conf, core=core_alsa_conf(self.root / "alsa-core.conf"))

    def start(self) -> None:
        env = dict(os.environ, PULSE_RUNTIME_PATH=str(self.root), HOME=str(self.root), XDG_RUNTIME_DIR=str(self.root))
        self.proc = subprocess.Popen(
            ["pulseaudio", "-n", "--daemonize=no", "--exit-idle-time=-1", "--use-pid-file=no", "--log-target=stderr",
             "--disable-shm=yes", "-L", f"module-native-protocol-unix socket={self.socket} auth-anonymous=1",
             "-L", f"module-null-sink sink_name=dc rate={self.rate} channels=1"],
            env=env, stdout=subprocess.DEVNULL, stderr=open(self.root / "pulse.log", "ab"))
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.socket.exists() and subprocess.run(
                    ["pactl", "-s", f"unix:{self.socket}", "info"], capture_output=True).returncode == 0:
                return
            time.sleep(0.1)
        raise RuntimeError(f"pulseaudio did not start; see {self.root / 'pulse.log'}")

    def play(self, samples: np.ndarray) -> subprocess.Popen:
        """Play mono float samples into the null sink at the real rate (pacat paces them)."""
        p = subprocess.Popen(["pacat", "--playback", "-s", f"unix:{self.socket}", "-d", "dc", "--format=s16le",
                              f"--rate={self.rate}", "--channels=1", "--raw"],
                             stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        data = to_s16(samples)

        def feed():  # pacat reads at the real rate: do not block the test
            try:
                p.stdin.write(data)
                p.stdin.close()
            except (BrokenPipeError, ValueError):
                pass

        threading.Thread(target=feed, daemon=True).start()
        self.players.append(p)
        return p

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None
        if self.socket.exists():
            self.socket.unlink()

    def pause(self) -> None:
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.proc.send_signal(signal.SIGCONT)

    def close(self) -> None:
        for p in self.players:
            if p.poll() is None:
                p.kill()
        if self.proc is not None:
            self.resume()
        self.kill()


@pytest.fixture
def pulse_server(tmp_path):
    for tool in ("pulseaudio", "pacat", "pactl"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed (apt-get install pulseaudio pulseaudio-utils)")
    if not SYSTEM_ALSA_CONF.exists():
        pytest.skip(f"no {SYSTEM_ALSA_CONF}")
    root = tmp_path / "pulse"
    root.mkdir()
    server = PulseServer(root)
    server.start()
    yield server
    server.close()
