"""Videos: probing, counting, partial decoding, mp4 encode/decode round trips."""

from __future__ import annotations

import io
from fractions import Fraction

import av
import fsspec
import numpy as np
import pytest
from fsspec.implementations.memory import MemoryFileSystem
from PIL import Image

from pusa_batch.errors import InputMediaError
from pusa_batch.video import (
    count_frames,
    decode_mp4,
    encode_mp4,
    poster_frame_png,
    probe_video,
    read_frames,
)


def gradient_clip(frames: int, height: int, width: int) -> np.ndarray:
    """A smooth moving gradient, like natural content; neighbouring frames differ."""
    y, x = np.mgrid[0:height, 0:width]
    clip = np.empty((frames, height, width, 3), dtype=np.uint8)
    for k in range(frames):
        clip[k, ..., 0] = x * 200 // max(width - 1, 1) + 2 * (k % 25)
        clip[k, ..., 1] = y * 200 // max(height - 1, 1) + 20
        clip[k, ..., 2] = 60 + 4 * (k % 40)
    return clip


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / mse))


def write_mkv(path, frames: np.ndarray, fps: int) -> None:
    """Matroska stores no frame count, so probing has to estimate it."""
    with av.open(str(path), "w", format="matroska") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for pixels in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
        out.mux(stream.encode(None))


class CountingMemoryFS(MemoryFileSystem):
    """memory:// that counts the bytes read through it, to see how much of a file was touched."""

    protocol = "countmem"
    bytes_read = 0

    def _open(self, path, mode="rb", **kwargs):
        f = super()._open(path, mode, **kwargs)
        return _CountingFile(f.getvalue()) if "r" in mode else f


class _CountingFile(io.BytesIO):
    def read(self, size=-1):
        data = super().read(size)
        CountingMemoryFS.bytes_read += len(data)
        return data

    def readinto(self, buffer):
        n = super().readinto(buffer)
        CountingMemoryFS.bytes_read += n
        return n


@pytest.fixture(scope="module")
def clip():
    return gradient_clip(24, 48, 64)


@pytest.fixture(scope="module")
def clip_path(tmp_path_factory, clip):
    path = tmp_path_factory.mktemp("videos") / "clip.mp4"
    path.write_bytes(encode_mp4(clip, 16))
    return path


def test_round_trip_keeps_frames_size_fps_and_pixels(clip):
    frames, fps = decode_mp4(encode_mp4(clip, 16))
    assert frames.shape == clip.shape
    assert fps == 16
    assert psnr(frames, clip) > 35


@pytest.mark.parametrize("rate", [Fraction(24000, 1001), 30, 12.5])
def test_round_trip_keeps_fractional_fps(rate):
    clip = gradient_clip(9, 16, 32)
    data = encode_mp4(clip, rate)
    frames, fps = decode_mp4(data)
    assert frames.shape[0] == 9
    assert fps == pytest.approx(float(rate), abs=1e-9)


def test_lower_crf_gives_higher_fidelity(clip):
    coarse, _ = decode_mp4(encode_mp4(clip, 16, crf=40))
    fine, _ = decode_mp4(encode_mp4(clip, 16, crf=10))
    assert psnr(fine, clip) > psnr(coarse, clip)


def test_identical_frames_give_identical_bytes(clip):
    assert encode_mp4(clip, 16) == encode_mp4(clip.copy(), 16)


def test_odd_dimensions_are_rejected_with_a_fix(clip):
    with pytest.raises(ValueError, match="even.*64x46"):
        encode_mp4(clip[:, :47], 16)


def test_non_uint8_frames_are_rejected(clip):
    with pytest.raises(ValueError, match="uint8"):
        encode_mp4(clip.astype(np.float32), 16)


def test_probe_reads_container_metadata(clip_path, clip):
    info = probe_video(clip_path)
    assert (info.frames, info.width, info.height, info.fps) == (24, 64, 48, 16.0)
    assert info.frames_exact


def test_probe_estimates_frames_when_container_has_no_count(tmp_path):
    path = tmp_path / "clip.mkv"
    write_mkv(path, gradient_clip(30, 16, 16), fps=10)
    info = probe_video(path)
    assert not info.frames_exact
    assert abs(info.frames - 30) <= 1
    assert count_frames(path) == 30


def test_count_frames_matches_encoded_count(clip_path):
    assert count_frames(clip_path) == 24


def test_read_frames_returns_requested_frames_in_order(clip_path, clip):
    got = read_frames(clip_path, [5, 0, 5], 64, 48)
    assert got.shape == (3, 48, 64, 3)
    assert psnr(got[0], clip[5]) > 30 and psnr(got[1], clip[0]) > 30
    assert np.array_equal(got[0], got[2])


def test_read_frames_resizes_and_crops_like_images(clip_path):
    got = read_frames(clip_path, [0, 1], 20, 40)
    assert got.shape == (2, 40, 20, 3)


def test_read_frames_too_short_says_needed_and_found(clip_path):
    with pytest.raises(InputMediaError, match=r"clip.mp4: needs 31 frames.*only 24"):
        read_frames(clip_path, [0, 30], 64, 48)


def test_read_frames_rejects_negative_indices(clip_path):
    with pytest.raises(ValueError, match="non-negative"):
        read_frames(clip_path, [-1], 64, 48)


def test_read_frames_stops_after_the_last_requested_frame():
    noise = np.random.default_rng(0).integers(0, 256, (240, 64, 64, 3), dtype=np.uint8)
    data = encode_mp4(noise, 24, crf=30, preset="ultrafast")
    fsspec.register_implementation("countmem", CountingMemoryFS, clobber=True)
    with fsspec.open("countmem://video-tests/long.mp4", "wb") as f:
        f.write(data)

    CountingMemoryFS.bytes_read = 0
    read_frames("countmem://video-tests/long.mp4", [0, 2], 64, 64)
    prefix_bytes = CountingMemoryFS.bytes_read
    CountingMemoryFS.bytes_read = 0
    read_frames("countmem://video-tests/long.mp4", [239], 64, 64)
    full_bytes = CountingMemoryFS.bytes_read

    assert full_bytes >= len(data) * 0.9
    assert prefix_bytes < len(data) * 0.25


def test_videos_load_from_fsspec_urls(clip):
    with fsspec.open("memory://video-tests/clip.mp4", "wb") as f:
        f.write(encode_mp4(clip, 16))
    assert probe_video("memory://video-tests/clip.mp4").frames == 24
    frames, fps = decode_mp4("memory://video-tests/clip.mp4")
    assert frames.shape == clip.shape and fps == 16


def test_poster_frame_is_the_first_frame_as_png(clip):
    png = poster_frame_png(encode_mp4(clip, 16))
    image = np.asarray(Image.open(io.BytesIO(png)))
    assert image.shape == (48, 64, 3)
    assert psnr(image, clip[0]) > 30


def test_missing_video_error_names_the_path(tmp_path):
    for call in (probe_video, count_frames):
        with pytest.raises(InputMediaError, match="gone.mp4.*not found"):
            call(tmp_path / "gone.mp4")


def test_corrupt_video_error_names_the_path(tmp_path):
    path = tmp_path / "corrupt.mp4"
    path.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 100)
    with pytest.raises(InputMediaError, match="corrupt.mp4"):
        probe_video(path)
    with pytest.raises(InputMediaError, match="corrupt.mp4"):
        read_frames(path, [0], 8, 8)


def test_image_file_is_not_a_video(tmp_path):
    path = tmp_path / "still.png"
    Image.new("RGB", (8, 8)).save(path)
    with pytest.raises(InputMediaError, match="still.png"):
        read_frames(path, [0, 5], 8, 8)


def test_corrupt_bytes_cannot_be_decoded():
    with pytest.raises(InputMediaError, match="cannot decode"):
        decode_mp4(b"not a video")
