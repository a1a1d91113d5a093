"""Hostile cells (issue 13): NaN, wrong types, repeated keys, empty manifests, infinities, huge
numbers and partial column names each get a message naming the row or column and the fix."""

from __future__ import annotations

import math

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pusa_batch.errors import ManifestError
from pusa_batch.manifest.builders_sweep import sweep
from pusa_batch.manifest.read import validate_manifest


def problems(path) -> list[tuple[int, str, str]]:
    return [(p.row, p.column, p.message) for p in validate_manifest(str(path)).problems]


def _parquet(tmp_path, **columns) -> str:
    path = tmp_path / "m.parquet"
    base = {
        "id": pa.array(["a", "b"]),
        "task": pa.array(["t2v"] * 2),
        "prompt": pa.array(["x"] * 2),
    }
    pq.write_table(pa.table({**base, **columns}), path)
    return path


@pytest.mark.parametrize("column", ["seed", "shift", "guidance_scale", "steps"])
def test_a_parquet_nan_in_a_number_column_is_a_row_error(tmp_path, column):
    path = _parquet(tmp_path, **{column: pa.array([math.nan, None], pa.float64())})
    [(row, where, message)] = problems(path)  # the null on row 2 is an empty cell: the default
    assert (row, where) == (1, column) and "NaN" in message


@pytest.mark.parametrize(
    ("values", "kind"),
    [(pa.array([0, 1], pa.timestamp("ms")), "timestamp[ms]"), (pa.array(["1", "2"]), "string")],
)
def test_a_parquet_number_column_of_another_type_is_a_column_error(tmp_path, values, kind):
    [(row, where, message)] = problems(_parquet(tmp_path, seed=values))
    assert (row, where) == (0, "seed") and f"holds {kind} values" in message


@pytest.mark.parametrize("key", ["seed", "prompt"])
def test_a_key_given_twice_on_a_jsonl_line_is_a_row_error(tmp_path, key):
    path = tmp_path / "m.jsonl"
    line = f'{{"id": "b", "task": "t2v", "prompt": "x", "seed": 1, "{key}": 2}}'
    path.write_text('{"id": "a", "task": "t2v", "prompt": "x"}\n' + line + "\n")
    [(row, where, message)] = problems(path)
    assert (row, where) == (2, key) and "appears more than once on this line" in message


def test_a_jsonl_nan_is_an_error_of_its_line_and_the_others_are_still_checked(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"id": "a", "task": "t2v", "prompt": "x", "shift": Infinity}\n'
                    '{"id": "b", "task": "t2x", "prompt": "x"}\n')  # fmt: skip
    assert [(r, c) for r, c, _ in problems(path)] == [(1, "shift"), (2, "task")]


@pytest.mark.parametrize("name", ["m.csv", "m.parquet", "m.jsonl"])
def test_a_manifest_with_no_rows_is_an_error(tmp_path, name):
    path = tmp_path / name
    if name.endswith(".csv"):
        path.write_text("id,task,prompt\n")
    elif name.endswith(".parquet"):
        empty = pa.array([], pa.string())
        pq.write_table(pa.table({"task": empty, "prompt": empty}), path)
    else:
        path.write_text("\n")
    with pytest.raises(ManifestError, match="the manifest has no rows"):
        validate_manifest(str(path))


@pytest.mark.parametrize("column", ["guidance_scale", "shift"])
def test_an_infinite_guidance_or_shift_must_be_a_finite_number(tmp_path, column):
    path = tmp_path / "m.csv"
    path.write_text(f"id,task,prompt,{column}\na,t2v,x,inf\n")
    [(_, _, message)] = problems(path)
    assert message.startswith(f"{column} must be a finite number")


def test_a_huge_json_integer_is_shown_as_written(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text(
        '{"id": "a", "task": "t2v", "prompt": "x", "seed": 123456789012345678901234567890}\n'
    )
    [(_, _, message)] = problems(path)
    assert message == "seed 123456789012345678901234567890 is outside 0..4294967295 (uint32)."


def test_fps_has_an_upper_limit(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("id,task,prompt,fps\na,t2v,x,100000000\nb,t2v,x,240\n")
    [(row, column, message)] = problems(path)
    assert (row, column) == (1, "fps") and "limit of 240 (max_fps)" in message


def test_an_empty_mp4_input_says_empty_file(tmp_path):
    (tmp_path / "v.mp4").write_bytes(b"")
    path = tmp_path / "m.csv"
    path.write_text("id,task,prompt,video\na,extend,x,v.mp4\n")
    [(_, column, message)] = problems(path)
    assert (column, message) == ("video", f"{tmp_path / 'v.mp4'} is an empty file (0 bytes); "
                                          "give a whole image or video.")  # fmt: skip


@pytest.mark.parametrize(
    ("name", "meant"),
    [("guidance", "guidance_scale"), ("negative", "negative_prompt"), ("frames", "num_frames")],
)
def test_a_partial_column_name_is_carried_and_asked_about(tmp_path, name, meant):
    path = tmp_path / "m.csv"
    path.write_text(f"id,task,prompt,{name},\na,t2v,x,3,\n")
    report = validate_manifest(str(path))
    assert report.ok and report.extra_columns == [name, "column 5 (empty header)"]
    assert f"{name} (did you mean {meant}" in report.extra_note()


def test_a_sweep_value_its_column_cannot_hold_names_key_and_value_and_writes_nothing(tmp_path):
    base = tmp_path / "base.csv"
    base.write_text("id,task,prompt\nb,t2v,a cat\n")
    with pytest.raises(ManifestError, match='grid seed="nan": expected an integer'):
        sweep(str(base), str(tmp_path / "s.csv"), {"seed": ["nan"]})
    with pytest.raises(ManifestError, match="column 'guidance_scale'"):
        sweep(str(base), str(tmp_path / "s.csv"), {"guidance_scale": [math.nan]})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base.csv"]
