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

import os
from pathlib import Path

import numpy as np
import pytest

SYSTEM_ALSA_CONF = Path(os.environ.get("ALSA_CONFIG_DIR", "/usr/share/alsa")) / "alsa.conf"
REPO = Path(__file__).resolve().parent.parent


def to_s16(samples: np.ndarray) -> bytes:
    x = np.asarray(samples, dtype=np.float32)
    return np.clip(np.round(x * 32767), -32768, 32767).astype("<i2").tobytes()


def pcm_block(name: str, infile: Path | str, rate: int, channels: int = 1, description: str = "") -> str:
    return f"""
pcm.{name}_null {{ type null }}
pcm.{name}_file {{
    type file
    slave.pcm "{name}_null"
    file "/dev/null"
    infile "{infile}"
    format "raw"
}}
pcm.{name} {{
    type plug
    slave {{ pcm "{name}_file" format S16_LE rate {rate} channels {channels} }}
    hint {{ show on description "{description or name}" }}
}}
"""


def alsa_env(conf: Path, base: dict | None = None) -> dict:
    env = dict(os.environ if base is None else base)
    env["ALSA_CONFIG_PATH"] = f"{SYSTEM_ALSA_CONF}:{conf}"
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
