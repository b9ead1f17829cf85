"""Seconds of video sampled per wall second: 30 s 640x360 25 fps clip, every_ms 100/1000, seek off/on."""
import sys
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, "/work/main")
from tests.media_video import photo_full, write_video
from video_service.sampling import VideoLimits, sample_frames


def make(path: Path, gop: int | None) -> None:
    # Slow pan + zoom across four photos, a hard cut every 7.5 s: realistic motion for the encoder.
    names = ["astronaut", "coffee", "chelsea", "rocket"]
    bigs = [Image.fromarray(photo_full(n)).resize((1280, 960)) for n in names]
    def frames():
        for i in range(750):
            big = bigs[i // 188]
            x = int((i % 188) / 188 * (1280 - 640))
            yield np.asarray(big.crop((x, 300, x + 640, 660))), i
    write_video(path, frames(), time_base=Fraction(1, 25), rate=25, gop=gop)

for gop in (None, 50):
    path = Path(f"/tmp/vbench/clip_gop{gop}.mp4")
    if not path.exists():
        make(path, gop)
    for every in (100, 1000, 5000):
        for seek in (False, True, None):
            best, cpu = 1e9, 1e9
            for _ in range(5):
                t0, c0 = time.perf_counter(), time.process_time()
                n = sum(1 for _ in sample_frames(path, every_ms=every, duration_s=None, min_frame_diff=0,
                                                 limits=VideoLimits(), seek=seek))
                best = min(best, time.perf_counter() - t0)
                cpu = min(cpu, time.process_time() - c0)
            print(f"gop={gop or 'x264 default(250)'} every_ms={every} seek={seek}: {n} frames, "
                  f"wall {best:.2f} s = {30 / best:.0f} s video/s; cpu {cpu:.2f} s = {30 / cpu:.0f} s video/cpu-s")
