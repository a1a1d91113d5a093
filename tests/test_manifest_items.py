"""iter_items / iter_raw_chunks: the same Items from CSV, Parquet and JSONL, defaults filled in."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pusa_batch.errors import ManifestError
from pusa_batch.item import Item
from pusa_batch.manifest.read import ManifestWarning, iter_items, iter_raw_chunks
from pusa_batch.manifest.schema import WAN_DEFAULTS

ROWS = [
    {"id": "one", "task": "t2v", "prompt": "a cat", "seed": 7, "guidance_scale": 5},
    {"task": "i2v", "prompt": "a dog", "image": "pics/dog.png", "cond_frames": [20],
     "noise_multipliers": [0.5]},
    {"task": "keyframes", "prompt": "a day", "images": ["pics/a.png", "pics/dog.png"],
     "cond_frames": [0, -1], "noise_multipliers": [0.2, 0.5], "num_frames": 33, "height": 480,
     "width": 832},
]  # fmt: skip
COLUMNS = ["id", "task", "prompt", "image", "images", "cond_frames", "noise_multipliers", "seed",
           "guidance_scale", "num_frames", "height", "width"]  # fmt: skip


def csv_cell(value) -> str:
    if value is None:
        return ""
    text = json.dumps(value) if isinstance(value, list) else str(value)
    return '"' + text.replace('"', '""') + '"' if "," in text or '"' in text else text


def write(tmp_path: Path, fmt: str, rows: list[dict] = ROWS) -> str:
    path = tmp_path / f"m.{fmt}"
    if fmt == "csv":
        lines = [",".join(COLUMNS)]
        lines += [",".join(csv_cell(r.get(c)) for c in COLUMNS) for r in rows]
        path.write_text("\n".join(lines) + "\n")
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        types = {
            "images": pa.list_(pa.string()),
            "cond_frames": pa.list_(pa.int64()),
            "noise_multipliers": pa.list_(pa.float64()),
            "guidance_scale": pa.float64(),
        }
        table = pa.table({c: pa.array([r.get(c) for r in rows], types.get(c)) for c in COLUMNS})
        pq.write_table(table, path)
    return str(path)


@pytest.fixture
def pics(tmp_path: Path) -> Path:
    (tmp_path / "pics").mkdir()
    for name in ("a", "dog"):
        Image.new("RGB", (16, 16)).save(tmp_path / "pics" / f"{name}.png")
    return tmp_path / "pics"


def test_csv_parquet_and_jsonl_give_identical_items(tmp_path, pics):
    items = {fmt: list(iter_items(write(tmp_path, fmt))) for fmt in ("csv", "parquet", "jsonl")}
    assert len(items["csv"]) == 3
    assert items["csv"] == items["parquet"] == items["jsonl"]


@pytest.mark.parametrize("cell", ["0,20", "[0, 20]", "[0,20]", " 0, 20 "])
def test_position_lists_read_the_same_in_every_spelling(tmp_path, pics, cell):
    path = tmp_path / "m.csv"
    path.write_text(
        f'task,prompt,images,cond_frames\nkeyframes,x,"pics/a.png,pics/a.png","{cell}"\n'
    )
    assert next(iter_items(str(path))).cond_frames == (0, 20)


def test_parquet_list_equals_csv_text(tmp_path, pics):
    pq.write_table(
        pa.table({"task": ["keyframes"], "prompt": ["x"],
                  "images": pa.array([["pics/a.png"] * 2], pa.list_(pa.string())),
                  "cond_frames": pa.array([[0, 20]], pa.list_(pa.int64()))}),
        tmp_path / "m.parquet",
    )  # fmt: skip
    (tmp_path / "m.csv").write_text(
        'task,prompt,images,cond_frames\nkeyframes,x,"[""pics/a.png"",""pics/a.png""]","0,20"\n'
    )
    from_parquet = next(iter_items(str(tmp_path / "m.parquet")))
    from_csv = next(iter_items(str(tmp_path / "m.csv")))
    assert from_parquet.cond_frames == from_csv.cond_frames == (0, 20)
    assert from_parquet.id == from_csv.id


def test_empty_cells_take_the_built_in_wan_defaults(tmp_path):
    (tmp_path / "m.csv").write_text("task,prompt,seed,steps,negative_prompt\nt2v,x,,,\n")
    item = next(iter_items(str(tmp_path / "m.csv")))
    for name, value in WAN_DEFAULTS.items():
        assert getattr(item, name) == value


def test_empty_cells_take_the_spec_defaults(tmp_path):
    defaults = SimpleNamespace(**{**WAN_DEFAULTS, "steps": 4, "negative_prompt": "blurry"})
    spec = SimpleNamespace(defaults=defaults, temporal_factor=4, spatial_multiple=16)
    (tmp_path / "m.csv").write_text("task,prompt,steps\nt2v,x,\nt2v,y,8\n")
    first, second = iter_items(str(tmp_path / "m.csv"), spec)
    assert (first.steps, first.negative_prompt) == (4, "blurry")
    assert second.steps == 8


def test_parquet_nulls_take_defaults(tmp_path):
    table = pa.table({"task": ["t2v"], "prompt": ["x"], "seed": pa.array([None], pa.int64())})
    pq.write_table(table, tmp_path / "m.parquet")
    assert next(iter_items(str(tmp_path / "m.parquet"))).seed == WAN_DEFAULTS["seed"]


def test_derived_ids_are_stable_and_content_based(tmp_path, pics):
    first = [i.id for i in iter_items(write(tmp_path, "csv"))]
    again = [i.id for i in iter_items(write(tmp_path, "csv"))]
    assert first == again
    assert first[0] == "one" and first[1].startswith("i2v-") and len(first[1]) == len("i2v-") + 12
    reordered = [i.id for i in iter_items(write(tmp_path, "csv", ROWS[::-1]))]
    assert reordered == first[::-1]


def test_derived_id_changes_with_the_content(tmp_path):
    (tmp_path / "m.csv").write_text("task,prompt,seed\nt2v,x,1\nt2v,x,2\n")
    a, b = iter_items(str(tmp_path / "m.csv"))
    assert a.id != b.id


def test_derived_id_does_not_depend_on_the_pipeline_defaults(tmp_path):
    spec = SimpleNamespace(defaults={"seed": 99}, temporal_factor=4, spatial_multiple=16)
    (tmp_path / "m.csv").write_text("task,prompt\nt2v,x\n")
    assert (
        next(iter_items(str(tmp_path / "m.csv"))).id
        == next(iter_items(str(tmp_path / "m.csv"), spec)).id
    )


def test_relative_paths_resolve_against_the_manifest_folder(tmp_path, pics, monkeypatch):
    monkeypatch.chdir("/")
    items = list(iter_items(write(tmp_path, "parquet")))
    assert items[1].images == (str(pics / "dog.png"),)
    assert items[2].images == (str(pics / "a.png"), str(pics / "dog.png"))


def test_urls_and_absolute_paths_are_kept(tmp_path):
    (tmp_path / "m.csv").write_text(
        "task,prompt,image\ni2v,x,s3://bucket/a.png\ni2v,y,/data/b.png\n"
    )
    first, second = iter_items(str(tmp_path / "m.csv"))
    assert (first.images, second.images) == (("s3://bucket/a.png",), ("/data/b.png",))


def test_items_keep_manifest_order_and_row_numbers(tmp_path):
    rows = "".join(f"t2v,p{k}\n" for k in range(7))
    (tmp_path / "m.csv").write_text("task,prompt\n" + rows)
    items = list(iter_items(str(tmp_path / "m.csv"), chunk_rows=3))
    assert [i.prompt for i in items] == [f"p{k}" for k in range(7)]
    assert [i.row for i in items] == list(range(1, 8))


def test_iter_items_refuses_a_bad_manifest(tmp_path):
    (tmp_path / "m.csv").write_text("task,prompt,seed\nt2v,x,abc\n")
    with pytest.raises(ManifestError) as err:
        list(iter_items(str(tmp_path / "m.csv")))
    assert err.value.problems[0].column == "seed"


def test_ones_own_columns_are_carried_as_the_items_extra_without_a_warning(tmp_path, recwarn):
    (tmp_path / "m.csv").write_text("task,prompt,category\nt2v,x,animals\n")
    item = next(iter_items(str(tmp_path / "m.csv")))
    assert item.extra == (("category", "animals"),) and not hasattr(item, "category")
    assert not [w for w in recwarn if issubclass(w.category, ManifestWarning)]


def test_a_misspelt_column_stops_reading_instead_of_using_the_default(tmp_path):
    (tmp_path / "m.csv").write_text("task,prompt,negativ_prompt\nt2v,x,blurry\n")
    with pytest.raises(ManifestError, match="did you mean 'negative_prompt'"):
        next(iter_items(str(tmp_path / "m.csv")))


def test_item_dict_round_trip_through_json(tmp_path, pics):
    for item in iter_items(write(tmp_path, "parquet")):
        assert Item.from_dict(json.loads(json.dumps(item.to_dict()))) == item


def test_item_from_dict_names_missing_keys():
    with pytest.raises(ManifestError, match="missing keys"):
        Item.from_dict({"id": "x"})


def test_cost_grows_with_frames_pixels_and_steps(tmp_path):
    (tmp_path / "m.csv").write_text("task,prompt\nt2v,x\n")
    item = next(iter_items(str(tmp_path / "m.csv")))
    assert item.cost() == item.num_frames * item.height * item.width * item.steps
    assert replace(item, steps=item.steps * 2).cost() == 2 * item.cost()


def test_raw_chunks_stream_in_pieces(tmp_path):
    (tmp_path / "m.jsonl").write_text("".join(json.dumps({"task": "t2v", "prompt": str(k)}) + "\n"
                                              for k in range(10)))  # fmt: skip
    sizes = [len(c) for c in iter_raw_chunks(str(tmp_path / "m.jsonl"), chunk_rows=4)]
    assert sizes == [4, 4, 2]


def test_raw_chunks_read_fsspec_urls():
    import fsspec

    with fsspec.open("memory://manifests/m.csv", "w") as f:
        f.write("task,prompt\nt2v,from memory\n")
    items = list(iter_items("memory://manifests/m.csv"))
    assert items[0].prompt == "from memory"


def test_bad_jsonl_line_names_the_line(tmp_path):
    (tmp_path / "m.jsonl").write_text('{"task": "t2v", "prompt": "x"}\n{oops\n')
    with pytest.raises(ManifestError, match="line 2"):
        list(iter_raw_chunks(str(tmp_path / "m.jsonl")))


def test_built_in_defaults_match_a_pipeline_without_a_defaults_table():
    from dataclasses import asdict

    from pusa_batch.manifest.schema import FIT_DEFAULTS
    from pusa_batch.pipelines.spec import Defaults

    built_in = asdict(Defaults())  # and image_fit / video_fit, the `fit` column's two defaults
    assert {k: v for k, v in built_in.items() if k not in FIT_DEFAULTS} == WAN_DEFAULTS


def test_a_real_pipeline_spec_supplies_the_defaults(tmp_path):
    from pusa_batch.pipelines.spec import load_pipeline_spec

    spec = load_pipeline_spec(Path(__file__).parents[1] / "pipelines" / "tiny.toml")
    (tmp_path / "m.csv").write_text("task,prompt\nt2v,x\n")
    item = next(iter_items(str(tmp_path / "m.csv"), spec))
    assert (item.num_frames, item.height, item.width, item.steps) == (
        spec.defaults.num_frames,
        spec.defaults.height,
        spec.defaults.width,
        spec.defaults.steps,
    )
