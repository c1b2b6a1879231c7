"""Makes tests/data/quiet/: clips in which no bird may ever be detected (synthetic, no credits needed).

- silence.flac: 20 s of digital silence;
- noise.ogg: 20 s of gusty wind-like brown noise, pink rain-like noise with drops, and 50 Hz mains hum
  (trainer/pool.py's synthetic negatives, so the shipped recipe has seen this kind of sound).

    python tests/data/make_quiet_clips.py
"""
from pathlib import Path

import numpy as np
import soundfile as sf

HERE = Path(__file__).resolve().parent / "quiet"
SR = 32000


def main() -> None:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from trainer.pool import synthetic

    HERE.mkdir(exist_ok=True)
    sf.write(HERE / "silence.flac", np.zeros(20 * SR, np.float32), SR)
    rng = np.random.default_rng(7)
    parts = [synthetic(k, rng) * g for k, g in (("wind", 4.0), ("wind", 2.0), ("rain", 1.0), ("pink", 2.0),
                                                 ("hum", 3.0), ("rain", 0.5), ("white", 1.0))]
    x = np.clip(np.concatenate(parts)[: 20 * SR], -1, 1).astype(np.float32)
    with sf.SoundFile(HERE / "noise.ogg", "w", SR, 1, format="OGG", subtype="VORBIS") as fh:
        for i in range(0, len(x), SR):  # libsndfile's Vorbis encoder can crash on one large write
            fh.write(x[i:i + SR])


if __name__ == "__main__":
    main()
