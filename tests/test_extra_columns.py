"""The user's own manifest columns: carried into each item as `extra`, typed as the file types
them, kept out of fingerprints and ids, and refused by `strict_columns` (issue 13)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pusa_batch.engine.plan import count_plan
from pusa_batch.errors import ManifestError
from pusa_batch.item import Item
from pusa_batch.manifest.read import (
    chunk_fingerprints,
    item_fingerprint,
    iter_checked_chunks,
    iter_items,
    plain_t2v_template,
    validate_manifest,
)
from pusa_batch.pipelines.spec import load_pipeline_spec
from pusa_batch.store.store import Store

TINY = Path(__file__).resolve().parents[1] / "pipelines" / "tiny.toml"


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def jsonl(path: Path, rows: list[dict]) -> str:
    return write(path, "".join(json.dumps(r) + "\n" for r in rows))


def extras(path: str) -> list[dict]:
    return [dict(item.extra) for item in iter_items(path)]


# ------------------------------------------------------------------------ carried, typed


def test_a_csv_columns_of_ours_stay_ours_and_the_others_are_the_items_extra(tmp_path):
    path = write(tmp_path / "m.csv", "id,task,prompt,category,source\na,t2v,x,animals,web\n")
    (item,) = iter_items(path)
    assert item.extra == (("category", "animals"), ("source", "web"))
    assert item.prompt == "x"


def test_a_csv_extra_cell_left_empty_is_null_and_every_csv_extra_is_text(tmp_path):
    path = write(tmp_path / "m.csv", "task,prompt,rank\nt2v,x,3\nt2v,y,\n")
    assert extras(path) == [{"rank": "3"}, {"rank": None}]


def test_parquet_extra_columns_keep_their_types_nulls_included(tmp_path):
    table = pa.table(
        {
            "task": ["t2v", "t2v"],
            "prompt": ["x", "y"],
            "rank": pa.array([1, None], pa.int64()),
            "score": [0.5, None],
            "keep": pa.array([True, None]),
            "tags": [["a", "b"], None],
        }
    )
    pq.write_table(table, tmp_path / "m.parquet")
    assert extras(str(tmp_path / "m.parquet")) == [
        {"rank": 1, "score": 0.5, "keep": True, "tags": '["a", "b"]'},
        {"rank": None, "score": None, "keep": None, "tags": None},
    ]


def test_jsonl_extra_values_keep_json_types_and_a_mixed_column_is_text(tmp_path):
    rows = [
        {"task": "t2v", "prompt": "x", "rank": 1, "mixed": "a"},
        {"task": "t2v", "prompt": "y", "mixed": 2},
    ]
    assert extras(jsonl(tmp_path / "m.jsonl", rows)) == [
        {"rank": 1, "mixed": "a"},
        {"rank": None, "mixed": "2"},
    ]


def test_a_manifest_without_extra_columns_builds_items_without_extra(tmp_path):
    path = write(tmp_path / "m.csv", "task,prompt\nt2v,x\n")
    (item,) = iter_items(path)
    assert item.extra == () and "extra" not in item.to_dict()
    assert all(chunk.extra == {} for chunk in iter_checked_chunks(path))


def test_validate_names_the_extra_columns_once_in_the_order_of_the_file(tmp_path):
    path = write(tmp_path / "m.csv", "source,task,prompt,category\nweb,t2v,x,animals\n")
    report = validate_manifest(path)
    assert report.ok and report.extra_columns == ["source", "category"]
    assert report.extra_note() == "carried as extra metadata: source, category"


def test_a_jsonl_key_first_seen_in_a_later_chunk_is_checked_and_carried(tmp_path):
    rows = [{"task": "t2v", "prompt": f"p{n}"} for n in range(3)]
    rows += [{"task": "t2v", "prompt": "late", "category": "c"}]
    path = jsonl(tmp_path / "m.jsonl", rows)
    assert validate_manifest(path, chunk_rows=2).extra_columns == ["category"]
    assert [dict(i.extra) for i in iter_items(path, chunk_rows=2)][-1] == {"category": "c"}


def test_a_near_miss_first_seen_in_a_later_jsonl_chunk_is_still_an_error(tmp_path):
    rows = [{"task": "t2v", "prompt": "a"}, {"task": "t2v", "prompt": "b"}]
    rows += [{"task": "t2v", "prompt": "c", "sed": 3}]
    report = validate_manifest(jsonl(tmp_path / "m.jsonl", rows), chunk_rows=2)
    assert [(p.column, "did you mean 'seed'" in p.message) for p in report.problems] == [
        ("sed", True)
    ]


@pytest.mark.parametrize("name", ["tags", "mask", "sources", "category", "caption", "style"])
def test_common_names_of_ones_own_columns_are_not_taken_for_near_misses(tmp_path, name):
    path = write(tmp_path / "m.csv", f"task,prompt,{name}\nt2v,x,a\n")
    assert validate_manifest(path).extra_columns == [name]


@pytest.mark.parametrize(
    ("name", "meant"),
    [("widht", "width"), ("hieght", "height"), ("negativ_prompt", "negative_prompt")]
    + [("guidence_scal", "guidance_scale"), ("Seed", "seed"), ("step", "steps")],
)
def test_one_slip_from_one_of_our_columns_is_a_near_miss(tmp_path, name, meant):
    path = write(tmp_path / "m.csv", f"task,prompt,{name}\nt2v,x,1\n")
    (problem,) = validate_manifest(path).problems
    assert f"did you mean '{meant}'" in problem.message


def test_a_repeated_extra_column_is_a_problem_not_a_second_column(tmp_path):
    path = write(tmp_path / "m.csv", "task,prompt,category,category\nt2v,x,a,b\n")
    (problem,) = validate_manifest(path).problems
    assert problem.column == "category.1" and "appears more than once" in problem.message


# ------------------------------------------------------------------------ strict


def test_strict_columns_makes_each_extra_column_a_problem_naming_it(tmp_path):
    path = write(tmp_path / "m.csv", "task,prompt,category,source\nt2v,x,a,b\n")
    report = validate_manifest(path, strict_columns=True)
    assert [p.column for p in report.problems] == ["category", "source"]
    assert "--strict-columns" in report.problems[0].message
    assert report.extra_columns == []


def test_strict_columns_passes_a_manifest_of_our_columns_only(tmp_path):
    path = write(tmp_path / "m.csv", "id,task,prompt,seed\na,t2v,x,1\n")
    assert validate_manifest(path, strict_columns=True).ok


def test_strict_columns_stops_iter_items_too(tmp_path):
    path = write(tmp_path / "m.csv", "task,prompt,category\nt2v,x,a\n")
    with pytest.raises(ManifestError, match="unknown column 'category'"):
        list(iter_items(path, strict_columns=True))


# ------------------------------------------------------------------------ records


def test_an_items_extra_survives_its_record(tmp_path):
    path = write(tmp_path / "m.csv", "task,prompt,category\nt2v,x,animals\n")
    (item,) = iter_items(path)
    record = json.loads(json.dumps(item.to_dict()))
    assert record["extra"] == {"category": "animals"}
    assert Item.from_dict(record) == item


def test_a_record_written_before_extra_was_carried_still_loads(tmp_path):
    path = write(tmp_path / "m.csv", "task,prompt\nt2v,x\n")
    (item,) = iter_items(path)
    old = item.to_dict()
    assert "extra" not in old  # the form markers had before
    assert Item.from_dict(old).extra == ()


# ------------------------------------------------------------------------ never the video's


@pytest.fixture(scope="module")
def spec():
    return load_pipeline_spec(str(TINY))


def labelled(tmp_path: Path, name: str, category: str) -> str:
    rows = "".join(f"r{n},t2v,prompt {n},{n},{category}\n" for n in range(3))
    return write(tmp_path / name, "id,task,prompt,seed,category\n" + rows)


def test_extra_columns_change_no_fingerprint_one_item_or_column_wise(tmp_path, spec):
    identity = spec.identity()
    plain = write(tmp_path / "p.csv", "id,task,prompt,seed\nr0,t2v,prompt 0,0\n")
    (bare,) = iter_items(plain, spec)
    (chunk,) = iter_checked_chunks(labelled(tmp_path, "m.csv", "cats"), spec)
    column_wise = chunk_fingerprints(
        chunk,
        [0, 1, 2],
        identity,
        temporal_factor=spec.temporal_factor,
        template=plain_t2v_template(identity),
    )
    assert column_wise[0] == item_fingerprint(bare, identity, temporal_factor=spec.temporal_factor)


def test_extra_columns_change_no_derived_id(tmp_path):
    a = write(tmp_path / "a.csv", "task,prompt,category\nt2v,x,cats\n")
    b = write(tmp_path / "b.csv", "task,prompt\nt2v,x\n")
    assert next(iter_items(a)).id == next(iter_items(b)).id


def test_a_relabelled_manifest_plans_every_done_item_as_done(tmp_path, spec):
    store = Store(str(tmp_path / "out"))
    identity = spec.identity()
    for item in iter_items(labelled(tmp_path, "first.csv", "cats"), spec):
        fingerprint = item_fingerprint(item, identity, temporal_factor=spec.temporal_factor)
        store.commit(item.id, b"video", {"item": item.to_dict(), "fingerprint": fingerprint})
    relabelled = labelled(tmp_path, "second.csv", "felines")
    plan = count_plan(relabelled, spec, store.state())
    assert (plan.done, plan.changed, plan.todo) == (3, 0, 0)
