"""Framing as data: `fit` = cover | contain | stretch | native, per pipeline and per row."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pusa_batch import video
from pusa_batch.errors import ManifestError, PipelineError
from pusa_batch.item import FITS, Item
from pusa_batch.manifest.read import item_fingerprint, iter_items, validate_manifest
from pusa_batch.pipelines.spec import load_pipeline_spec, parse_pipeline_spec

pytest_plugins = ["pipeline_support"]
PIPELINES = Path(__file__).resolve().parents[1] / "pipelines"
GREEN, WHITE, BLACK = (0, 200, 0), (255, 255, 255), (0, 0, 0)


def banded(path: Path, width: int = 200, height: int = 100) -> Path:
    """2:1: green bands on the left and right quarters, white in the middle half."""
    pixels = np.full((height, width, 3), WHITE, dtype=np.uint8)
    pixels[:, : width // 4] = GREEN
    pixels[:, -width // 4 :] = GREEN
    Image.fromarray(pixels).save(path)
    return path


def is_colour(pixels: np.ndarray, colour, tol: int = 12) -> bool:
    return bool(np.all(np.abs(pixels.astype(int) - np.array(colour)) <= tol))


# ------------------------------------------------------------------------------ the pixels


def test_every_fit_is_known_to_the_framing_code():
    assert video.FITS == FITS


def test_cover_keeps_the_centre_and_crops_the_sides(tmp_path):
    out = video.load_image(banded(tmp_path / "b.png"), 64, 64, fit="cover")
    assert out.shape == (64, 64, 3)
    assert is_colour(out, WHITE)  # the middle half of a 2:1 picture is the whole square


def test_contain_letterboxes_on_black_bars_of_the_expected_size(tmp_path):
    out = video.load_image(banded(tmp_path / "b.png"), 128, 128, fit="contain")
    # 200x100 into 128x128: scaled by 0.64 to 128x64, pasted at y = (128 - 64) // 2 = 32
    assert np.array_equal(out[:32], np.zeros((32, 128, 3), np.uint8))
    assert np.array_equal(out[96:], np.zeros((32, 128, 3), np.uint8))
    picture = out[32:96]
    assert is_colour(picture[4:-4, 4:28], GREEN) and is_colour(picture[4:-4, 40:88], WHITE)
    assert is_colour(picture[4:-4, 100:124], GREEN)


def test_contain_pillarboxes_a_tall_picture(tmp_path):
    tall = tmp_path / "tall.png"
    Image.new("RGB", (50, 100), WHITE).save(tall)
    out = video.load_image(tall, 128, 64, fit="contain")
    # 50x100 into 128x64: scaled by 0.64 to 32x64, pasted at x = (128 - 32) // 2 = 48
    assert not out[:, :48].any() and not out[:, 80:].any()
    assert is_colour(out[:, 50:78], WHITE)


def test_stretch_keeps_everything_squeezed(tmp_path):
    out = video.load_image(banded(tmp_path / "b.png"), 64, 64, fit="stretch")
    assert is_colour(out[:, 2:14], GREEN) and is_colour(out[:, 20:44], WHITE)
    assert is_colour(out[:, 50:62], GREEN)
    assert not (out == 0).all(axis=-1).any()  # no bars


def test_video_frames_are_framed_like_images(tmp_path):
    frames = np.zeros((3, 48, 96, 3), dtype=np.uint8)
    frames[:] = WHITE
    path = tmp_path / "wide.mp4"
    path.write_bytes(video.encode_mp4(frames, fps=8))
    out = video.read_frames(path, [0, 2], 64, 64, fit="contain")
    assert out.shape == (2, 64, 64, 3)
    # 96x48 into 64x64: 64x32 at y = 16
    assert (out[:, :14] < 8).all() and (out[:, 50:] < 8).all()
    assert is_colour(out[:, 20:44], WHITE, tol=20)


def test_an_unknown_fit_is_refused_by_the_framing_code(tmp_path):
    with pytest.raises(ValueError, match="cover, contain, stretch, native"):
        video.load_image(banded(tmp_path / "b.png"), 64, 64, fit="squash")


# ------------------------------------------------------------------------------ specs and rows


def spec_with(tmp_path: Path, **defaults) -> Path:
    """The tiny Wan spec with extra [defaults] keys."""
    text = (PIPELINES / "tiny.toml").read_text()
    extra = "".join(f'{k} = "{v}"\n' for k, v in defaults.items())
    path = tmp_path / "pipe.toml"
    path.write_text(text.replace("[defaults]\n", "[defaults]\n" + extra))
    return path


@pytest.mark.parametrize(
    ("name", "image_fit", "video_fit"),
    [
        ("pusa-v1-wan2.1-t2v-14b.toml", "native", "cover"),  # wan_14b_multi_frames / v2v
        ("pusa-wan2.2-a14b.toml", "contain", "cover"),  # wan22_14b_multi_frames / v2v
        ("pusa-v0.5-mochi.toml", "cover", "cover"),  # demos/cli_test_*_release.py
        ("tiny.toml", "cover", "cover"),  # the built-in default: the framing before `fit`
    ],
)
def test_each_real_spec_frames_as_its_upstream_scripts(name, image_fit, video_fit):
    d = load_pipeline_spec(PIPELINES / name).defaults
    assert (d.image_fit, d.video_fit) == (image_fit, video_fit)


def test_a_bad_default_fit_is_refused_naming_the_key():
    raw = {"family": "wan2.1", "weights": {"tiny": "wan2.1"}, "defaults": {"image_fit": "zoom"}}
    with pytest.raises(PipelineError, match=r"defaults\.image_fit.*cover, contain"):
        parse_pipeline_spec(raw, Path("/x/pipe.toml"))


def manifest(tmp_path: Path, *rows: str, header: str = "id,task,prompt,image,fit") -> str:
    path = tmp_path / "m.csv"
    path.write_text("\n".join([header, *rows]) + "\n")
    return str(path)


def test_the_pipeline_default_applies_and_a_row_fit_wins(tmp_path, clip):
    banded(tmp_path / "b.png")
    spec = load_pipeline_spec(spec_with(tmp_path, image_fit="contain", video_fit="stretch"))
    path = manifest(
        tmp_path,
        "a,i2v,x,b.png,",
        "b,i2v,x,b.png,Cover",
        f"c,extend,x,,,{clip}",
        f"d,extend,x,,stretch,{clip}",
        f"e,extend,x,,contain,{clip}",
        "f,t2v,x,,",
        header="id,task,prompt,image,fit,video",
    )
    items = {item.id: item for item in iter_items(path, spec)}
    got = {k: item.fit for k, item in items.items()}
    assert got == {"a": "contain", "b": "cover", "c": "stretch", "d": "stretch", "e": "contain",
                   "f": None}  # fmt: skip
    assert items["a"].to_dict()["fit"] == "contain"  # what the item record keeps


def test_a_bad_fit_is_a_row_error_naming_the_column_and_the_choices(tmp_path):
    banded(tmp_path / "b.png")
    report = validate_manifest(manifest(tmp_path, "a,i2v,x,b.png,", "b,i2v,x,b.png,squash"))
    (problem,) = report.problems
    assert (problem.row, problem.column) == (2, "fit")
    assert "'squash'" in problem.message and "cover, contain, stretch, native" in problem.message


def test_native_takes_the_size_from_the_first_image(tmp_path):
    banded(tmp_path / "b.png", 200, 100)  # rounded down to x16: 192x96
    Image.new("RGB", (64, 64)).save(tmp_path / "square.png")
    spec = load_pipeline_spec(spec_with(tmp_path, image_fit="native"))
    path = manifest(
        tmp_path,
        'a,keyframes,x,"b.png,square.png",',
        "b,i2v,x,square.png,",
        "c,i2v,x,b.png,cover",
        header="id,task,prompt,images,fit",
    )
    items = {item.id: item for item in iter_items(path, spec)}
    assert (items["a"].width, items["a"].height, items["a"].fit) == (192, 96, "native")
    assert (items["b"].width, items["b"].height) == (64, 64)
    assert (items["c"].width, items["c"].height) == (spec.defaults.width, spec.defaults.height)


def test_native_takes_the_size_from_a_video(tmp_path):
    frames = np.zeros((9, 40, 72, 3), dtype=np.uint8)
    (tmp_path / "v.mp4").write_bytes(video.encode_mp4(frames, fps=8))
    spec = load_pipeline_spec(spec_with(tmp_path, video_fit="native"))
    path = manifest(tmp_path, "a,extend,x,v.mp4,", header="id,task,prompt,video,fit")
    (item,) = iter_items(path, spec)
    assert (item.width, item.height, item.fit) == (64, 32, "native")


def test_native_with_a_height_or_width_on_the_row_is_a_row_error(tmp_path):
    banded(tmp_path / "b.png")
    spec = load_pipeline_spec(spec_with(tmp_path, image_fit="native"))
    path = manifest(tmp_path, "a,i2v,x,b.png,,64", header="id,task,prompt,image,fit,height")
    (problem,) = validate_manifest(path, spec).problems
    assert problem.column == "fit" and "leave height empty" in problem.message
    with pytest.raises(ManifestError, match="fit native"):
        list(iter_items(path, spec))


def test_native_over_the_pipeline_limits_is_a_row_error(tmp_path):
    banded(tmp_path / "big.png", 4000, 400)
    spec = load_pipeline_spec(spec_with(tmp_path, image_fit="native"))
    (problem,) = validate_manifest(manifest(tmp_path, "a,i2v,x,big.png,"), spec).problems
    assert problem.column == "fit"
    assert "4000x400" in problem.message and "limits.max_side = 2048" in problem.message


def test_native_on_a_picture_smaller_than_the_multiple_is_a_row_error(tmp_path):
    Image.new("RGB", (40, 8)).save(tmp_path / "thin.png")
    spec = load_pipeline_spec(spec_with(tmp_path, image_fit="native"))
    (problem,) = validate_manifest(manifest(tmp_path, "a,i2v,x,thin.png,"), spec).problems
    assert problem.column == "fit" and "smaller than 16x16" in problem.message


# ------------------------------------------------------------------------------ records


def base_item(**changes) -> Item:
    fields = dict(
        id="a", row=1, task="i2v", prompt="x", negative_prompt="", images=("/p.png",),
        video=None, video_b=None, cond_frames=None, noise_multipliers=None, num_frames=17,
        height=64, width=64, fps=8, seed=0, steps=4, guidance_scale=3.0, shift=5.0,
    )  # fmt: skip
    return Item(**{**fields, **changes})


def test_cover_hashes_as_before_fit_and_other_fits_change_the_fingerprint():
    def fp(item: Item) -> str:
        return item_fingerprint(item, "pipe", hash_file=lambda p: "h")

    legacy = base_item()  # fit None: an item from before `fit` (framed "cover")
    assert fp(base_item(fit="cover")) == fp(legacy)
    others = {fp(base_item(fit=f)) for f in ("contain", "stretch", "native")}
    assert len(others) == 3 and fp(legacy) not in others


def test_item_records_round_trip_the_fit_and_old_records_read_as_cover():
    item = base_item(fit="contain")
    assert Item.from_dict(item.to_dict()) == item
    old = item.to_dict()
    del old["fit"]
    assert Item.from_dict(old).fit == "cover"
    old_t2v = base_item(task="t2v", images=()).to_dict()
    del old_t2v["fit"]
    assert Item.from_dict(old_t2v).fit is None


# ------------------------------------------------------------------------------ the pipeline


@pytest.fixture(scope="module")
def pipe(cache):
    from pusa_batch.pipelines import load_pipeline

    return load_pipeline(load_pipeline_spec(PIPELINES / "tiny.toml"), device="cpu")


@pytest.mark.parametrize("fit", ["contain", "stretch"])
def test_the_pipeline_encodes_the_image_framed_by_the_item_fit(pipe, tmp_path, fit):
    image = str(banded(tmp_path / "b.png"))
    item = dataclasses.replace(base_item(images=(image,), fit=fit), steps=pipe.spec.defaults.steps)
    cond = pipe._conditioning(item)
    framed = video.load_image(image, 64, 64, fit=fit)
    expected = pipe.encode_video(framed[None])[:, :, 0]
    cover = pipe.encode_video(video.load_image(image, 64, 64)[None])[:, :, 0]
    assert np.allclose(cond.clean[:, :, 0].numpy(), expected.numpy(), atol=1e-6)
    assert not np.allclose(cond.clean[:, :, 0].numpy(), cover.numpy(), atol=1e-3)
