"""Manifests and inputs that used to crash, hang or pass silently: each is a clear problem."""

from __future__ import annotations

import os

import pytest
from PIL import Image

from pusa_batch.errors import ManifestError
from pusa_batch.manifest.read import validate_manifest


def problems(path) -> list[tuple[int, str, str]]:
    report = validate_manifest(str(path))
    return [(p.row, p.column, p.message) for p in report.problems]


@pytest.mark.parametrize(
    ("column", "meant"),
    [("sed", "seed"), ("num_frame", "num_frames"), ("negative_promt", "negative_prompt")],
)
def test_a_column_close_to_one_of_ours_is_an_error_with_did_you_mean(tmp_path, column, meant):
    path = tmp_path / "m.csv"
    path.write_text(f"id,task,prompt,{column}\na,t2v,a cat,3\n")
    [(row, where, message)] = problems(path)
    assert (row, where) == (0, column) and f"did you mean '{meant}'" in message


def test_a_column_of_the_users_own_is_not_an_error(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("id,task,prompt,category\na,t2v,a cat,animals\n")
    assert problems(path) == []


def test_a_repeated_column_is_an_error(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("id,task,prompt,seed,seed\na,t2v,a cat,1,2\n")
    assert [m for _, _, m in problems(path)] == [
        "the column 'seed' appears more than once; keep one."
    ]


def test_an_empty_manifest_is_a_manifest_error(tmp_path):
    (tmp_path / "m.csv").write_bytes(b"")
    with pytest.raises(ManifestError, match="the manifest is empty"):
        validate_manifest(str(tmp_path / "m.csv"))


def test_a_corrupt_parquet_manifest_is_a_manifest_error(tmp_path):
    (tmp_path / "m.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(ManifestError, match="cannot read the manifest as parquet"):
        validate_manifest(str(tmp_path / "m.parquet"))


def test_a_fifo_as_an_image_is_refused_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "pipe.png")
    path = tmp_path / "m.csv"
    path.write_text("id,task,prompt,image\na,i2v,a cat,pipe.png\n")
    [(row, where, message)] = problems(path)  # before the fix, this never returned
    assert (row, where) == (1, "image") and "not a regular file" in message


def test_a_decompression_bomb_is_a_row_problem(tmp_path):
    Image.new("1", (20_000, 20_000)).save(tmp_path / "bomb.png")
    path = tmp_path / "m.csv"
    path.write_text("id,task,prompt,image\na,i2v,a cat,bomb.png\n")
    [(row, where, message)] = problems(path)
    assert (row, where) == (1, "image") and "too many pixels" in message


@pytest.mark.parametrize(
    ("cells", "column", "limit"),
    [
        ("steps=1000000000", "steps", "max_steps"),
        ("width=1600000000", "width", "max_side"),
        ("height=100000", "height", "max_side"),
        ("num_frames=100001", "num_frames", "max_frames"),
        ("height=1920;width=1920", "width", "max_pixels"),
    ],
)
def test_items_beyond_the_pipelines_limits_are_refused_naming_the_limit(
    tmp_path, cells, column, limit
):
    values = dict(cell.split("=") for cell in cells.split(";"))
    header = ",".join(["id", "task", "prompt", *values])
    path = tmp_path / "m.csv"
    path.write_text(f"{header}\na,t2v,a cat,{','.join(values.values())}\n")
    found = [(where, message) for _, where, message in problems(path)]
    assert any(where == column and f"({limit})" in message for where, message in found), found


def test_a_pipeline_toml_can_raise_its_limits(tmp_path):
    from pusa_batch.pipelines.spec import load_pipeline_spec

    toml = tmp_path / "big.toml"
    toml.write_text('family = "wan2.1"\n[weights]\ntiny = "wan2.1"\n[limits]\nmax_steps = 5000\n')
    path = tmp_path / "m.csv"
    path.write_text("id,task,prompt,steps\na,t2v,a cat,4000\n")
    assert validate_manifest(str(path), load_pipeline_spec(toml)).problems == []
    assert [c for _, c, _ in problems(path)] == ["steps"]  # the default limit without the TOML


def test_nan_in_a_json_manifest_is_an_error_of_its_row_not_the_default(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"id": "a", "task": "t2v", "prompt": "a cat", "seed": 1}\n'
                    '{"id": "b", "task": "t2v", "prompt": "a dog", "seed": NaN}\n')  # fmt: skip
    [(row, column, message)] = problems(path)
    assert (row, column) == (2, "seed") and message.startswith("NaN is not a number")
