"""Images: header probes, EXIF orientation, mode conversion, cover-resize + center-crop."""

from __future__ import annotations

import fsspec
import numpy as np
import pytest
from PIL import Image

from pusa_batch.errors import InputMediaError
from pusa_batch.video import ALPHA_BACKGROUND, ImageInfo, load_image, probe_image

RED, BLUE, GREEN = (255, 0, 0), (0, 0, 255), (0, 255, 0)


def halves(width: int, height: int, left=RED, right=BLUE) -> Image.Image:
    """Left half one colour, right half another."""
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    pixels[:, : width // 2] = left
    pixels[:, width // 2 :] = right
    return Image.fromarray(pixels)


def near(pixel, colour, tol=40) -> bool:
    return bool(np.all(np.abs(np.asarray(pixel, dtype=int) - np.asarray(colour)) <= tol))


def save_rotated_jpeg(path, image: Image.Image, orientation: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    image.save(path, format="JPEG", quality=95, exif=exif)


def test_probe_reports_header_size_and_mode(tmp_path):
    path = tmp_path / "a.png"
    Image.new("RGBA", (37, 21)).save(path)
    assert probe_image(path) == ImageInfo(width=37, height=21, mode="RGBA")


def test_probe_swaps_size_of_exif_rotated_photo(tmp_path):
    path = tmp_path / "rot.jpg"
    save_rotated_jpeg(path, halves(40, 20), orientation=6)
    info = probe_image(path)
    assert (info.width, info.height) == (20, 40)


def test_exif_rotated_jpeg_is_loaded_upright(tmp_path):
    # Orientation 6 means "rotate 90 degrees clockwise to display": the stored left (red)
    # half ends up on top.
    path = tmp_path / "rot.jpg"
    save_rotated_jpeg(path, halves(40, 20), orientation=6)
    out = load_image(path, 20, 40)
    assert out.shape == (40, 20, 3)
    assert near(out[5, 10], RED)
    assert near(out[35, 10], BLUE)


def test_output_is_always_the_requested_size(tmp_path):
    path = tmp_path / "small.png"
    halves(13, 7).save(path)
    for width, height in [(64, 32), (8, 80), (13, 7), (2, 2)]:
        out = load_image(path, width, height)
        assert out.shape == (height, width, 3)
        assert out.dtype == np.uint8


def test_narrow_crop_keeps_the_center(tmp_path):
    path = tmp_path / "wide.png"
    halves(200, 100).save(path)
    out = load_image(path, 20, 100)
    # The kept strip is the middle 20 columns: red on its left, blue on its right.
    assert all(near(out[50, x], RED) for x in range(8))
    assert all(near(out[50, x], BLUE) for x in range(12, 20))


def test_wide_crop_of_tall_image_keeps_the_middle_band(tmp_path):
    pixels = np.zeros((300, 100, 3), dtype=np.uint8)
    pixels[:100], pixels[100:200], pixels[200:] = RED, GREEN, BLUE
    path = tmp_path / "tall.png"
    Image.fromarray(pixels).save(path)
    out = load_image(path, 50, 50)
    assert near(out[0, 25], GREEN) and near(out[49, 25], GREEN)


def test_rgba_is_composited_on_the_documented_background(tmp_path):
    pixels = np.zeros((10, 10, 4), dtype=np.uint8)
    pixels[:, 5:] = (*RED, 255)  # left half fully transparent
    path = tmp_path / "a.png"
    Image.fromarray(pixels, mode="RGBA").save(path)
    out = load_image(path, 10, 10)
    assert tuple(out[5, 1]) == ALPHA_BACKGROUND
    assert tuple(out[5, 8]) == RED


def test_palette_with_transparency_converts(tmp_path):
    image = Image.new("P", (8, 8), 0)
    image.putpalette([0, 0, 0, *GREEN] + [0] * 762)
    image.paste(1, (4, 0, 8, 8))
    path = tmp_path / "p.png"
    image.save(path, transparency=0)
    out = load_image(path, 8, 8)
    assert tuple(out[4, 1]) == ALPHA_BACKGROUND
    assert tuple(out[4, 6]) == GREEN


def test_grayscale_becomes_equal_rgb_channels(tmp_path):
    path = tmp_path / "g.png"
    Image.fromarray(np.full((6, 6), 77, dtype=np.uint8), mode="L").save(path)
    out = load_image(path, 6, 6)
    assert np.all(out == 77)


def test_16bit_grayscale_is_scaled_not_clipped(tmp_path):
    values = np.zeros((4, 4), dtype=np.uint16)
    values[:, 2:] = 32896  # 128 * 257
    path = tmp_path / "g16.png"
    Image.fromarray(values).save(path)
    out = load_image(path, 4, 4)
    assert np.all(out[:, :1] == 0)
    assert np.all(out[:, 3:] == 128)


def test_cmyk_jpeg_converts_to_rgb(tmp_path):
    path = tmp_path / "c.jpg"
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(path, quality=95)  # pure red in CMYK
    out = load_image(path, 16, 16)
    assert out.shape == (16, 16, 3)
    assert near(out[8, 8], RED)


def test_images_load_from_fsspec_urls():
    fs = fsspec.filesystem("memory")
    with fs.open("/video-tests/img.png", "wb") as f:
        halves(30, 10).save(f, format="PNG")
    assert probe_image("memory://video-tests/img.png").width == 30
    assert load_image("memory://video-tests/img.png", 6, 2).shape == (2, 6, 3)


def test_missing_image_error_names_the_path(tmp_path):
    path = tmp_path / "nope.png"
    for call in (lambda: probe_image(path), lambda: load_image(path, 8, 8)):
        with pytest.raises(InputMediaError, match="nope.png.*not found"):
            call()


def test_corrupt_image_error_names_the_path(tmp_path):
    path = tmp_path / "broken.jpg"
    path.write_bytes(b"this is not a jpeg at all")
    with pytest.raises(InputMediaError, match="broken.jpg"):
        probe_image(path)
    with pytest.raises(InputMediaError, match="broken.jpg"):
        load_image(path, 8, 8)


def test_truncated_image_error_names_the_path(tmp_path):
    full = tmp_path / "full.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(full)
    cut = tmp_path / "cut.png"
    cut.write_bytes(full.read_bytes()[:400])
    with pytest.raises(InputMediaError, match="cut.png"):
        load_image(cut, 8, 8)


def test_bad_target_size_is_a_value_error(tmp_path):
    path = tmp_path / "a.png"
    halves(4, 4).save(path)
    with pytest.raises(ValueError, match="positive"):
        load_image(path, 0, 4)
