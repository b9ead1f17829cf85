"""Frame sampling against real encoded videos whose content per frame is known."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shared.errors import TooLarge, UnsupportedMedia
from tests import media_video as media
from video_service.sampling import (
    SampledFrame,
    VideoLimits,
    changed_frames,
    format_time,
    probe,
    sample_frames,
)

LIMITS = VideoLimits()


@dataclass(frozen=True)
class Videos:
    slideshow: media.MadeVideo
    short: media.MadeVideo
    pan: media.MadeVideo
    zoom: media.MadeVideo
    fade: media.MadeVideo
    vfr: media.MadeVideo
    late: media.MadeVideo
    rotated: media.MadeVideo
    truncated: media.MadeVideo
    headless: media.MadeVideo
    keyframes: media.MadeVideo


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> Videos:
    d = tmp_path_factory.mktemp("videos")
    sub = tmp_path_factory.mktemp("truncated")
    return Videos(
        slideshow=media.slideshow(d),
        short=media.short_shot(d),
        pan=media.pan(d),
        zoom=media.zoom(d),
        fade=media.fade(d),
        vfr=media.variable_rate(d),
        late=media.late_start(d),
        rotated=media.rotated(d),
        truncated=media.truncated(d),
        headless=media.truncated(sub, faststart=False),
        # A keyframe every 5 frames, so seeking really skips decoding.
        keyframes=media.slideshow(d, name="gop5.mp4", gop=5),
    )


def sample(path: Path, every_ms: int, *, duration_s: float | None = None, min_frame_diff: float = 0,
           limits: VideoLimits = LIMITS, seek: bool | None = None) -> list[SampledFrame]:
    return list(sample_frames(path, every_ms=every_ms, duration_s=duration_s, min_frame_diff=min_frame_diff,
                              limits=limits, seek=seek))


def expected_samples(path: Path, every_ms: int, end_s: float = 1e9) -> list[tuple[int, float]]:
    """From a plain decode loop: the first frame at or after each multiple of every_ms."""
    out: list[tuple[int, float]] = []
    k = 0
    for index, t in media.plain_decode(path):
        if t >= end_s:
            break
        if t >= k * every_ms / 1000 - 1e-9:
            out.append((index, round(t, 6)))
            while k * every_ms / 1000 <= t + 1e-9:
                k += 1
    return out


def got(frames: list[SampledFrame]) -> list[tuple[int, float]]:
    return [(f.index, round(f.time_s, 6)) for f in frames]


@pytest.mark.parametrize("name", ["slideshow", "short", "vfr", "late", "fade"])
@pytest.mark.parametrize("every_ms", [30, 100, 200, 1000])
def test_indices_and_times_agree_with_a_plain_decode(videos: Videos, name: str, every_ms: int) -> None:
    video: media.MadeVideo = getattr(videos, name)
    frames = sample(video.path, every_ms)
    assert got(frames) == expected_samples(video.path, every_ms)
    for f in frames:
        if video.photo_at(f.time_s) != "fade":
            assert media.nearest_photo(f.image) == video.photo_at(f.time_s)


def test_every_ms_spacing_on_a_25_fps_slideshow(videos: Videos) -> None:
    frames = sample(videos.slideshow.path, 200)
    assert [f.index for f in frames] == list(range(0, 100, 5))
    assert [f.time_s for f in frames] == pytest.approx([i * 0.2 for i in range(20)])
    assert [media.nearest_photo(f.image) for f in frames] == [
        p for p in ("astronaut", "coffee", "chelsea", "rocket") for _ in range(5)
    ]
    assert all(f.image.mode == "RGB" and f.image.size == (320, 240) for f in frames)


def test_duration_cuts_the_video_and_is_capped_by_the_server_limit(videos: Videos) -> None:
    path = videos.slideshow.path
    assert [f.time_s for f in sample(path, 200, duration_s=1.5)] == pytest.approx(
        [0, 0.2, 0.4, 0.6, 0.8, 1.0, 1.2, 1.4])
    capped = sample(path, 200, duration_s=3, limits=VideoLimits(max_duration_s=1))
    assert max(f.time_s for f in capped) < 1
    assert len(sample(path, 200, duration_s=0)) == len(sample(path, 200)) == 20


def test_max_frames_stops_after_that_many_analysed_frames(videos: Videos) -> None:
    frames = sample(videos.slideshow.path, 100, limits=VideoLimits(max_frames=3))
    assert [f.index for f in frames] == [0, 3, 5]


def test_min_frame_diff_yields_about_one_frame_per_shot(videos: Videos) -> None:
    frames = sample(videos.slideshow.path, 100, min_frame_diff=10)
    assert [media.nearest_photo(f.image) for f in frames] == ["astronaut", "coffee", "chelsea", "rocket"]
    assert [f.time_s for f in frames] == pytest.approx([0.0, *videos.slideshow.cut_times])
    assert len(sample(videos.slideshow.path, 100, min_frame_diff=0)) == 40


@pytest.mark.parametrize("name", ["pan", "zoom"])
def test_min_frame_diff_follows_a_moving_camera_without_taking_every_frame(videos: Videos, name: str) -> None:
    path = getattr(videos, name).path
    counts = [len(sample(path, 100, min_frame_diff=d)) for d in (0, 30, 60)]
    assert counts[0] == 20
    # A moving shot is re-analysed as it drifts (not only once), yet far less often than every sample.
    assert 4 <= counts[1] <= 12
    assert 1 < counts[2] < counts[1]


def test_short_shot_of_three_frames_is_found(videos: Videos) -> None:
    for every_ms in (40, 100, 200):
        frames = sample(videos.short.path, every_ms, min_frame_diff=10)
        photos = [media.nearest_photo(f.image) for f in frames]
        assert photos == ["astronaut", "chelsea", "coffee"], every_ms
    frames = sample(videos.short.path, 100, min_frame_diff=10)
    assert [f.index for f in frames] == [0, 25, 28]


def test_fade_goes_from_first_to_second_photo(videos: Videos) -> None:
    frames = sample(videos.fade.path, 200, min_frame_diff=10)
    photos = [media.nearest_photo(f.image, ["astronaut", "chelsea"]) for f in frames]
    assert photos[0] == "astronaut" and photos[-1] == "chelsea"
    # During the fade the picture keeps changing, so more than the two held shots are analysed.
    assert len(frames) > 2
    assert all(f.time_s <= 2.0 + 1e-9 for f in frames)


def test_variable_frame_rate_uses_timestamps(videos: Videos) -> None:
    frames = sample(videos.vfr.path, 100)
    # After the 700 ms gap the next frame is at 1.14 s; index/fps arithmetic would say otherwise.
    assert (7, 1.14) in got(frames)
    assert [f.time_s for f in frames] == sorted(f.time_s for f in frames)
    assert [media.nearest_photo(f.image) for f in sample(videos.vfr.path, 100, min_frame_diff=10)] == [
        "astronaut", "coffee", "rocket"]


def test_non_zero_start_time_counts_from_the_first_frame(videos: Videos) -> None:
    assert probe(videos.late.path).container == "mpegts"
    frames = sample(videos.late.path, 500)
    assert got(frames) == [(0, 0.0), (13, 0.52), (25, 1.0), (38, 1.52)]
    assert [media.nearest_photo(f.image) for f in frames] == ["astronaut", "astronaut", "chelsea", "chelsea"]


def test_rotation_metadata_is_applied(videos: Videos) -> None:
    info = probe(videos.rotated.path)
    assert (info.width, info.height, info.rotation) == (240, 320, 90)
    frames = sample(videos.rotated.path, 400)
    assert [f.image.size for f in frames] == [(320, 240), (320, 240)]
    assert [media.nearest_photo(f.image) for f in frames] == ["astronaut", "coffee"]
    upright = np.asarray(frames[0].image, dtype=np.int16)
    assert float(np.abs(upright - media.photo("astronaut")).mean()) < 8


@pytest.mark.parametrize("every_ms", [100, 400, 1000])
def test_seeking_yields_the_same_frames_as_decoding_everything(videos: Videos, every_ms: int) -> None:
    path = videos.keyframes.path
    plain, seeking = sample(path, every_ms, seek=False), sample(path, every_ms, seek=True)
    assert got(seeking) == got(plain) == expected_samples(path, every_ms)
    for a, b in zip(plain, seeking, strict=True):
        assert np.array_equal(np.asarray(a.image), np.asarray(b.image))


def test_probe_of_a_slideshow(videos: Videos) -> None:
    info = probe(videos.slideshow.path)
    assert (info.width, info.height, info.rotation, info.codec) == (320, 240, 0, "h264")
    assert info.fps == pytest.approx(25)
    assert info.duration_s == pytest.approx(4.0)
    assert info.frame_count == 100


def test_truncated_file_yields_the_frames_before_the_cut(videos: Videos) -> None:
    decodable = media.plain_decode(videos.truncated.path)
    assert 0 < len(decodable) < 100
    frames = sample(videos.truncated.path, 40)
    assert got(frames) == [(i, round(t, 6)) for i, t in decodable]
    assert [media.nearest_photo(f.image) for f in frames] == videos.truncated.frame_photos[: len(frames)]


def test_truncated_file_without_its_header_is_not_a_video(videos: Videos) -> None:
    with pytest.raises(UnsupportedMedia, match="not a readable video"):
        sample(videos.headless.path, 100)
    with pytest.raises(UnsupportedMedia, match="not a readable video"):
        probe(videos.headless.path)


def test_hostile_and_wrong_files_are_refused(tmp_path: Path) -> None:
    zipped = media.zip_as_mp4(tmp_path)
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    playlist = tmp_path / "list.m3u8"
    playlist.write_text(f"#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1,\nfile://{zipped}\n#EXT-X-ENDLIST\n")
    for path in (zipped, empty, playlist):
        with pytest.raises(UnsupportedMedia, match="not a readable video"):
            sample(path, 100)
    with pytest.raises(UnsupportedMedia, match="no video stream"):
        sample(media.audio_only(tmp_path), 100)
    with pytest.raises(UnsupportedMedia, match="no video stream"):
        probe(media.audio_only(tmp_path))


def test_resolution_over_the_limit_is_too_large(videos: Videos) -> None:
    with pytest.raises(TooLarge, match="320x240 over the 76799-pixel limit"):
        sample(videos.slideshow.path, 100, limits=VideoLimits(max_pixels=320 * 240 - 1))
    assert len(sample(videos.slideshow.path, 1000, limits=VideoLimits(max_pixels=320 * 240))) == 4


def test_format_time() -> None:
    assert [format_time(s) for s in (0, 0.99, 23.7, 59.999, 60, 3723.5, 36000)] == [
        "0:00:00", "0:00:00", "0:00:23", "0:00:59", "0:01:00", "1:02:03", "10:00:00"]


def test_changed_frames_keeps_a_frame_when_its_tag_set_changes() -> None:
    tagged = [("f0", [1]), ("f1", [1]), ("f2", [2, 1]), ("f3", [1, 2]), ("f4", [1]), ("f5", []), ("f6", [])]
    assert [f for f, _ in changed_frames(tagged)] == ["f0", "f2", "f4", "f5"]
    assert list(changed_frames([])) == []
    image = Image.new("RGB", (2, 2))
    frames = [(SampledFrame(i, i / 10, image), tags) for i, tags in enumerate([[0], [0], [5], [5]])]
    assert [(f.index, tags) for f, tags in changed_frames(frames)] == [(0, [0]), (2, [5])]


def test_a_sampling_point_between_frames_takes_the_next_frame(videos: Videos) -> None:
    frames = sample(videos.slideshow.path, 250, duration_s=0.75)
    assert got(frames) == [(0, 0.0), (7, 0.28), (13, 0.52)]
