"""Image and video I/O: header probes, decoding to fixed-size RGB frames, mp4 encoding.

Every input may be a local path or an fsspec URL (``s3://``, ``memory://``, ...). Frames are always
``uint8`` RGB arrays shaped ``(H, W, 3)`` / ``(n, H, W, 3)``, always exactly the requested size.
How a picture of another aspect ratio is framed is its ``fit`` (``FITS``; LANCZOS throughout):
"cover" scales it to cover ``width x height`` and keeps the middle (the default; Pusa's V2V and
V0.5 scripts centre-crop, then resize), "contain" scales it to fit inside and pastes it centred
on black (Pusa's Wan2.2 multi-frame script), "stretch" resizes it plainly, and "native" is a
plain resize too: its size was taken from the input itself (`native_size`, Pusa's Wan2.1
multi-frame script), so only the first input's last few rows and columns are squeezed away.

Transparent images are composited on **white** (``ALPHA_BACKGROUND``): cut-out product shots and
logos, the common transparent inputs, are drawn for a white page.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import BinaryIO

import av
import fsspec
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from pusa_batch.errors import InputMediaError

ALPHA_BACKGROUND = (255, 255, 255)
LETTERBOX = (0, 0, 0)  # the bars of fit = "contain", black as upstream pastes on
FITS = ("cover", "contain", "stretch", "native")  # = pusa_batch.item.FITS
BOMB = Image.DecompressionBombError  # Pillow's limit on pixels (a tiny file, gigabytes decoded)
_ROTATING_ORIENTATIONS = {5, 6, 7, 8}  # EXIF orientations that swap width and height
_EXIF_ORIENTATION = 0x0112

PathLike = str | os.PathLike


@dataclass(frozen=True)
class ImageInfo:
    width: int
    height: int
    mode: str


@dataclass(frozen=True)
class VideoInfo:
    frames: int
    width: int
    height: int
    fps: float
    frames_exact: bool  # False when `frames` is estimated from duration * fps


# --------------------------------------------------------------------------- opening inputs


def _is_local(path: PathLike) -> bool:
    text = os.fspath(path)
    return "://" not in text or text.startswith("file://")


@contextlib.contextmanager
def _open_binary(path: PathLike, storage_options: dict | None = None) -> Iterator[BinaryIO]:
    """Open a local path (fast path, no fsspec) or an fsspec URL for reading bytes."""
    try:
        if _is_local(path):
            text = os.fspath(path).removeprefix("file://")
            if os.path.exists(text) and not os.path.isdir(text) and not os.path.isfile(text):
                raise InputMediaError(
                    f"{path}: not a regular file (a FIFO, socket or device); give a file path."
                )
            with open(text, "rb") as f:
                yield f
        else:
            with fsspec.open(os.fspath(path), "rb", **(storage_options or {})) as f:
                yield f
    except FileNotFoundError as e:
        raise InputMediaError(f"{path}: file not found. Check the path in the manifest.") from e
    except IsADirectoryError as e:
        raise InputMediaError(f"{path}: is a directory, expected a file.") from e
    except PermissionError as e:
        raise InputMediaError(f"{path}: permission denied when opening it.") from e


def _check_size(width: int, height: int) -> None:
    if int(width) != width or int(height) != height or width < 1 or height < 1:
        raise ValueError(f"target size must be positive integers, got {width}x{height}")


# --------------------------------------------------------------------------- images


def probe_image(path: PathLike, *, storage_options: dict | None = None) -> ImageInfo:
    """Size and mode from the header only; EXIF-rotated photos report their displayed size."""
    with _open_binary(path, storage_options) as f:
        try:
            with Image.open(f) as img:
                width, height = img.size
                orientation = img.getexif().get(_EXIF_ORIENTATION, 1)
                mode = img.mode
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError, BOMB) as e:
            raise _image_error(path, e) from e
    if orientation in _ROTATING_ORIENTATIONS:
        width, height = height, width
    return ImageInfo(width=width, height=height, mode=mode)


def load_image(
    path: PathLike,
    width: int,
    height: int,
    *,
    fit: str = "cover",
    storage_options: dict | None = None,
) -> np.ndarray:
    """Decode an image to ``uint8 (height, width, 3)`` RGB: EXIF-upright, framed by `fit`."""
    _check_size(width, height)
    with _open_binary(path, storage_options) as f:
        try:
            with Image.open(f) as img:
                img.load()
                rgb = to_rgb(ImageOps.exif_transpose(img))
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError, BOMB) as e:
            raise _image_error(path, e) from e
    return np.asarray(fit_image(rgb, width, height, fit), dtype=np.uint8)


def _image_error(path: PathLike, e: Exception) -> InputMediaError:
    if isinstance(e, BOMB):
        return InputMediaError(
            f"{path}: too many pixels to decode safely ({e}); resize it to the video's size first."
        )
    return InputMediaError(
        f"{path}: cannot read it as an image ({type(e).__name__}: {e}). "
        "Check that it is a complete JPEG, PNG, WebP or BMP file."
    )


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode to 8-bit RGB; alpha composited on ALPHA_BACKGROUND, 16-bit scaled down."""
    if img.mode == "RGB":
        return img
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16-bit grayscale: PIL's own convert clips at 255 instead of scaling, so scale by hand.
        values = np.asarray(img, dtype=np.float64)
        gray = np.clip(np.rint(values / 257.0), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, mode="L").convert("RGB")
    if img.mode == "F":
        gray = np.clip(np.rint(np.asarray(img, dtype=np.float64)), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, mode="L").convert("RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*ALPHA_BACKGROUND, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def fit_image(img: Image.Image, width: int, height: int, fit: str = "cover") -> Image.Image:
    """The image framed in exactly width x height by `fit` (see the module's docstring)."""
    if fit not in FITS:
        raise ValueError(f"fit must be one of {', '.join(FITS)}, got {fit!r}")
    if img.size == (width, height):
        return img
    if fit == "contain":
        return _letterbox(img, width, height)
    if fit in ("stretch", "native"):
        return img.resize((width, height), Image.Resampling.LANCZOS)
    src_w, src_h = img.size
    scale = max(width / src_w, height / src_h)
    box_w, box_h = width / scale, height / scale
    left, top = (src_w - box_w) / 2, (src_h - box_h) / 2
    box = (left, top, left + box_w, top + box_h)
    return img.resize((width, height), Image.Resampling.LANCZOS, box=box)


def _letterbox(img: Image.Image, width: int, height: int) -> Image.Image:
    """Fit inside, centred on black, with upstream's arithmetic (wan22_14b_multi_frames_pusa.py
    72-85: the scaled size truncated with int(), the offsets floored)."""
    src_w, src_h = img.size
    ratio = min(width / src_w, height / src_h)
    new_w, new_h = max(1, int(src_w * ratio)), max(1, int(src_h * ratio))
    canvas = Image.new("RGB", (width, height), LETTERBOX)
    canvas.paste(
        img.resize((new_w, new_h), Image.Resampling.LANCZOS),
        ((width - new_w) // 2, (height - new_h) // 2),
    )
    return canvas


def native_size(width: int, height: int, multiple: int) -> tuple[int, int]:
    """fit = "native": the input's own size rounded down to `multiple` (Pusa's Wan2.1 multi-frame
    script: ``(w // 16) * 16``); (0, 0) parts mean the input is smaller than one multiple."""
    return width // multiple * multiple, height // multiple * multiple


# --------------------------------------------------------------------------- videos


def _is_still_image(format_name: str) -> bool:
    """FFmpeg's demuxers of single images (png_pipe, jpeg_pipe...); GIF and WebP may animate."""
    animated = ("gif_pipe", "webp_pipe")
    return (format_name.endswith("_pipe") and format_name not in animated) or (
        format_name == "image2"
    )


@contextlib.contextmanager
def _open_container(path: PathLike, storage_options: dict | None = None) -> Iterator:
    with _open_binary(path, storage_options) as f:
        try:
            container = av.open(f, mode="r")
        except (av.error.FFmpegError, ValueError) as e:
            raise InputMediaError(
                f"{path}: cannot read it as a video ({e}). Check that the file is a complete "
                "mp4/webm/mov/mkv."
            ) from e
        try:
            if not container.streams.video:
                raise InputMediaError(f"{path}: the file has no video stream.")
            if _is_still_image(container.format.name):
                raise InputMediaError(
                    f"{path}: this is an image ({container.format.name.removesuffix('_pipe')}), "
                    "not a video; give a video (mp4, webm, mov, mkv), or the image as an image "
                    "input (image, images)"
                )
            yield container
        finally:
            container.close()


def probe_video(path: PathLike, *, storage_options: dict | None = None) -> VideoInfo:
    """Frame count, size and fps from container metadata (no decoding).

    When the container does not store a frame count (webm, mkv, some streams), it is estimated as
    ``round(duration * fps)`` and ``frames_exact`` is False; use `count_frames` for an exact count.
    """
    with _open_container(path, storage_options) as container:
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        fps = float(rate) if rate else 0.0
        frames, exact = int(stream.frames or 0), True
        if frames <= 0:
            exact = False
            if stream.duration is not None and stream.time_base is not None:
                seconds = float(stream.duration * stream.time_base)
            elif container.duration is not None:
                seconds = container.duration / av.time_base
            else:
                seconds = 0.0
            frames = round(seconds * fps)
        ctx = stream.codec_context
        return VideoInfo(frames, int(ctx.width), int(ctx.height), fps, exact)


def count_frames(path: PathLike, *, storage_options: dict | None = None) -> int:
    """Exact frame count by demuxing the video packets (no decoding)."""
    with _open_container(path, storage_options) as container:
        stream = container.streams.video[0]
        try:
            return sum(1 for packet in container.demux(stream) if packet.size > 0)
        except av.error.FFmpegError as e:
            raise InputMediaError(f"{path}: the video is corrupt ({e}).") from e


def read_frames(
    path: PathLike,
    indices: Sequence[int],
    width: int,
    height: int,
    *,
    fit: str = "cover",
    storage_options: dict | None = None,
) -> np.ndarray:
    """Frames at ``indices`` (0-based, in the order given) as ``uint8 (n, height, width, 3)``,
    each framed by `fit` as `load_image` frames an image.

    Decodes sequentially and stops at ``max(indices)``; the rest of the file is never decoded.
    Negative indices are rejected: the caller resolves them with the frame count.
    """
    _check_size(width, height)
    wanted = [int(i) for i in indices]
    if not wanted:
        return np.zeros((0, height, width, 3), dtype=np.uint8)
    if min(wanted) < 0:
        raise ValueError(f"read_frames takes non-negative indices, got {min(wanted)}")
    last = max(wanted)
    needed = set(wanted)
    found: dict[int, np.ndarray] = {}
    decoded = 0
    with _open_container(path, storage_options) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        try:
            for decoded, frame in enumerate(container.decode(stream), start=1):
                index = decoded - 1
                if index in needed:
                    found[index] = np.asarray(fit_image(frame.to_image(), width, height, fit))
                if index >= last:
                    break
        except av.error.FFmpegError as e:
            raise InputMediaError(f"{path}: decoding failed at frame {decoded} ({e}).") from e
    if last not in found:
        raise InputMediaError(
            f"{path}: needs {last + 1} frames (frame index {last}) but the video has only "
            f"{decoded}. Use a longer video or earlier frames."
        )
    return np.stack([found[i] for i in wanted])


# --------------------------------------------------------------------------- mp4


@functools.cache
def h264_encoder() -> str:
    """'libx264' when PyAV's FFmpeg has it, else 'mpeg4' (decided once per process)."""
    try:
        av.codec.Codec("libx264", "w")
        return "libx264"
    except (av.error.FFmpegError, ValueError):
        return "mpeg4"


def _as_fraction(fps: float | Fraction) -> Fraction:
    rate = Fraction(fps).limit_denominator(1001)
    if rate <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    return rate


def _check_frames(frames: np.ndarray) -> None:
    if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8:
        raise ValueError("frames must be a numpy uint8 array shaped (F, H, W, 3)")
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] < 1:
        raise ValueError(f"frames must be shaped (F, H, W, 3) with F >= 1, got {frames.shape}")
    _, h, w, _ = frames.shape
    if h % 2 or w % 2:
        raise ValueError(
            f"yuv420p needs even width and height, got {w}x{h}; crop or resize to "
            f"{w - w % 2}x{h - h % 2}"
        )


def encode_mp4(
    frames: np.ndarray,
    fps: float | Fraction,
    *,
    crf: int = 18,
    preset: str = "medium",
) -> bytes:
    """Encode ``uint8 (F, H, W, 3)`` RGB frames to mp4 bytes (H.264 yuv420p, in memory).

    The time base is exactly ``1/fps`` so a decoder reads back the same frame count and fps.
    Identical frames always give identical bytes, whatever the process encoded before: libx264
    runs with ``threads=1`` and without macroblock-tree rate control (see `_encoder_options`).
    ``crf`` is libx264's quality (0 lossless-ish, 18 near transparent, 23 default); with the
    mpeg4 fallback it is mapped to a fixed quantiser.
    """
    _check_frames(frames)
    rate = _as_fraction(fps)
    buffer = io.BytesIO()
    codec = h264_encoder()
    with av.open(buffer, mode="w", format="mp4") as out:
        stream = out.add_stream(codec, rate=rate, options=_encoder_options(codec, crf, preset))
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.time_base = 1 / rate
        stream.codec_context.time_base = 1 / rate
        for index, pixels in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(pixels), format="rgb24")
            frame.pts = index
            frame.time_base = 1 / rate
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return buffer.getvalue()


def _encoder_options(codec: str, crf: int, preset: str) -> dict[str, str]:
    """Decisions: libx264's macroblock-tree (``mbtree``) is off. With it on, the same frames
    encode to different bitstreams (different decoded pixels) depending on what the process
    encoded before, so one worker and two workers made different videos from the same latents.
    Off, the output depends on the frames alone; the cost is a few percent more bytes at a crf.
    """
    if not 0 <= crf <= 51:
        raise ValueError(f"crf must be in 0..51, got {crf}")
    if codec == "libx264":
        return {"crf": str(crf), "preset": preset, "threads": "1", "x264-params": "mbtree=0"}
    q = str(min(31, max(2, round(crf / 6))))
    return {"qmin": q, "qmax": q, "threads": "1"}


def decode_mp4(
    data_or_path: bytes | PathLike, *, storage_options: dict | None = None
) -> tuple[np.ndarray, float]:
    """All frames of a video as ``uint8 (F, H, W, 3)`` plus its fps (for tests and posters)."""
    if isinstance(data_or_path, bytes | bytearray | memoryview):
        return _decode_all(io.BytesIO(bytes(data_or_path)), "<video bytes>")
    with _open_binary(data_or_path, storage_options) as f:
        return _decode_all(f, data_or_path)


def _decode_all(source: BinaryIO, name: PathLike) -> tuple[np.ndarray, float]:
    try:
        with av.open(source, mode="r") as container:
            if not container.streams.video:
                raise InputMediaError(f"{name}: the file has no video stream.")
            stream = container.streams.video[0]
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
            rate = stream.average_rate or stream.guessed_rate
    except (av.error.FFmpegError, ValueError) as e:
        raise InputMediaError(f"{name}: cannot decode the video ({e}).") from e
    if not frames:
        raise InputMediaError(f"{name}: the video has no frames.")
    return np.stack(frames), float(rate) if rate else 0.0


def poster_frame_png(video_bytes: bytes) -> bytes:
    """The first frame of an encoded video as PNG bytes."""
    try:
        with av.open(io.BytesIO(video_bytes), mode="r") as container:
            if not container.streams.video:
                raise InputMediaError("<video bytes>: the data has no video stream.")
            first = next(container.decode(video=0), None)
            if first is None:
                raise InputMediaError("<video bytes>: the video has no frames.")
            image = first.to_image()
    except (av.error.FFmpegError, ValueError) as e:
        raise InputMediaError(f"<video bytes>: cannot decode the video ({e}).") from e
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def loop_seam(frames: np.ndarray) -> dict[str, float | None]:
    """How seamlessly a clip loops: the jump from its last frame back to its first, next to its
    ordinary frame-to-frame steps. Mean absolute differences in 0..255 pixel units; a seam ratio
    at or below 1 means the wrap-around is no bigger than a normal step. PSNR is None when the
    first and last frames are identical."""
    f = np.asarray(frames, dtype=np.float32)
    if f.ndim != 4 or f.shape[0] < 2:
        raise ValueError(f"need frames (F >= 2, H, W, C), got shape {f.shape}")
    seam = float(np.abs(f[-1] - f[0]).mean())
    steps = np.abs(np.diff(f, axis=0)).mean(axis=(1, 2, 3))
    mean_step = float(steps.mean())
    mse = float(((f[-1] - f[0]) ** 2).mean())
    return {
        "first_last_mae": round(seam, 4),
        "mean_step_mae": round(mean_step, 4),
        "closing_step_mae": round(float(steps[-1]), 4),
        "seam_ratio": round(seam / mean_step, 4) if mean_step > 0 else 0.0,
        "first_last_psnr_db": None if mse == 0 else round(float(10 * np.log10(255.0**2 / mse)), 2),
    }
