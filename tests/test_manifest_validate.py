"""validate_manifest: every problem is reported with its row, id and column, all at once."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pusa_batch.errors import ManifestError
from pusa_batch.manifest.read import MAX_PROBLEMS_KEPT, validate_manifest

HEADER = "id,task,prompt,image,video,cond_frames,noise_multipliers,num_frames,width,height,seed,steps,guidance_scale,shift"  # noqa: E501


def write_csv(tmp_path: Path, *rows: str, header: str = HEADER) -> str:
    path = tmp_path / "m.csv"
    path.write_text("\n".join([header, *rows]) + "\n")
    return str(path)


def only_problem(path: str, **kwargs):
    report = validate_manifest(path, **kwargs)
    assert report.problem_count == 1, [str(p) for p in report.problems]
    return report.problems[0]


def where(problem) -> tuple[int, str | None, str]:
    return problem.row, problem.id, problem.column


@pytest.fixture
def png(tmp_path: Path) -> Path:
    Image.new("RGB", (32, 32), (10, 200, 10)).save(tmp_path / "pic.png")
    return tmp_path / "pic.png"


def test_a_clean_manifest_has_no_problems_and_counts_tasks(tmp_path, png):
    path = write_csv(tmp_path, "a,t2v,a cat,,,,,,,,,,,", "b,i2v,a dog,pic.png,,,,,,,,,,")
    report = validate_manifest(path)
    assert report.ok and report.rows == 2
    assert report.task_counts == {"i2v": 1, "t2v": 1}


def test_missing_required_column_is_a_header_problem(tmp_path):
    path = write_csv(tmp_path, "a,t2v", header="id,task")
    problem = only_problem(path)
    assert where(problem) == (0, None, "prompt")


def test_empty_prompt(tmp_path):
    path = write_csv(tmp_path, "a,t2v,,,,,,,,,,,,")
    assert where(only_problem(path)) == (1, "a", "prompt")


def test_unknown_task_lists_the_valid_ones(tmp_path):
    problem = only_problem(write_csv(tmp_path, "a,t2i,a cat,,,,,,,,,,,"))
    assert where(problem) == (1, "a", "task")
    assert "t2v" in problem.message and "keyframes" in problem.message


def test_seed_that_is_not_a_number(tmp_path):
    problem = only_problem(write_csv(tmp_path, "a,t2v,a cat,,,,,,,,abc,,,"))
    assert where(problem) == (1, "a", "seed") and "'abc'" in problem.message


@pytest.mark.parametrize("seed", ["-1", "4294967296", "1e30"])
def test_seed_out_of_uint32_range(tmp_path, seed):
    assert where(only_problem(write_csv(tmp_path, f"a,t2v,a cat,,,,,,,,{seed},,,"))) == (
        1,
        "a",
        "seed",
    )


def test_duplicate_id_names_both_rows(tmp_path):
    path = write_csv(
        tmp_path, "a,t2v,one,,,,,,,,,,,", "b,t2v,two,,,,,,,,,,,", "a,t2v,three,,,,,,,,,,,"
    )
    problem = only_problem(path)
    assert where(problem) == (3, "a", "id") and "row 1" in problem.message


def test_duplicate_id_across_chunks(tmp_path):
    rows = [f"r{k},t2v,p{k},,,,,,,,,,," for k in range(10)] + ["r3,t2v,again,,,,,,,,,,,"]
    problem = only_problem(write_csv(tmp_path, *rows), chunk_rows=4)
    assert where(problem) == (11, "r3", "id") and "row 4" in problem.message


def test_identical_rows_without_ids_are_duplicates(tmp_path):
    path = write_csv(tmp_path, ",t2v,same,,,,,,,,,,,", ",t2v,same,,,,,,,,,,,")
    problem = only_problem(path)
    assert problem.row == 2 and problem.column == "id" and "row 1" in problem.message


@pytest.mark.parametrize("bad_id", ["a b", "../x", "x/y", "a" * 129, "é"])
def test_id_unsafe_as_a_file_name(tmp_path, bad_id):
    problem = only_problem(write_csv(tmp_path, f'"{bad_id}",t2v,a cat,,,,,,,,,,,'))
    assert where(problem) == (1, bad_id, "id")


def test_missing_input_file(tmp_path):
    problem = only_problem(write_csv(tmp_path, "a,i2v,a cat,nope.png,,,,,,,,,,"))
    assert where(problem) == (1, "a", "image") and str(tmp_path / "nope.png") in problem.message


def test_unreadable_image(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"not a png at all")
    problem = only_problem(write_csv(tmp_path, "a,i2v,a cat,broken.png,,,,,,,,,,"))
    assert where(problem) == (1, "a", "image")


def test_unreadable_video(tmp_path):
    (tmp_path / "broken.mp4").write_bytes(b"\x00" * 64)
    problem = only_problem(write_csv(tmp_path, "a,extend,go on,,broken.mp4,,,,,,,,,"))
    assert where(problem) == (1, "a", "video")


def test_files_are_not_opened_without_check_files(tmp_path):
    report = validate_manifest(
        write_csv(tmp_path, "a,i2v,a cat,nope.png,,,,,,,,,,"), check_files=False
    )
    assert report.ok


def test_video_too_short_for_the_task(tmp_path):
    clip = Path(__file__).parents[1] / "manifests" / "media" / "clip_a.mp4"  # 81 frames
    path = write_csv(tmp_path, f"a,extend,go on,,{clip},0..96,,121,,,,,,")
    assert where(only_problem(path)) == (1, "a", "video")


@pytest.mark.parametrize(
    ("column", "cells"),
    [
        ("num_frames", ",,,,,80,,,,,,"),
        ("width", ",,,,,,1000,,,,,"),
        ("height", ",,,,,,,-16,,,,"),
        ("steps", ",,,,,,,,,0,,"),
        ("guidance_scale", ",,,,,,,,,,0.5,"),
        ("shift", ",,,,,,,,,,,-1"),
    ],
)
def test_out_of_range_values(tmp_path, column, cells):
    problem = only_problem(write_csv(tmp_path, f"a,t2v,a cat{cells}"))
    assert where(problem) == (1, "a", column)


def test_size_rules_come_from_the_spec(tmp_path):
    spec = SimpleNamespace(defaults={}, temporal_factor=6, spatial_multiple=8)
    path = write_csv(tmp_path, "a,t2v,a cat,,,,,25,1000,,,,,", "b,t2v,a dog,,,,,81,,,,,,")
    report = validate_manifest(path, spec)
    assert [where(p) for p in report.problems] == [(2, "b", "num_frames")]


def test_conditioning_errors_from_the_task_planner(tmp_path, png):
    path = write_csv(tmp_path, "a,i2v,a cat,pic.png,,200,,,,,,,,", "b,i2v,a cat,,,,,,,,,,,")
    report = validate_manifest(path)
    assert [where(p) for p in report.problems] == [(1, "a", "cond_frames"), (2, "b", "image")]


def test_multiplier_count_mismatch(tmp_path, png):
    path = write_csv(tmp_path, 'a,i2v,a cat,pic.png,,0,"0.2,0.5",,,,,,,')
    assert where(only_problem(path)) == (1, "a", "noise_multipliers")


def test_t2v_with_an_image_is_refused(tmp_path, png):
    assert where(only_problem(write_csv(tmp_path, "a,t2v,a cat,pic.png,,,,,,,,,,"))) == (
        1,
        "a",
        "image",
    )


def test_unreadable_position_list(tmp_path, png):
    problem = only_problem(write_csv(tmp_path, "a,i2v,a cat,pic.png,,zero,,,,,,,,"))
    assert where(problem) == (1, "a", "cond_frames")


def test_every_bad_row_is_reported_at_once(tmp_path):
    path = write_csv(
        tmp_path,
        "a,t2v,fine,,,,,,,,,,,",
        "b,nope,x,,,,,,,,,,,",
        "c,t2v,x,,,,,,,,abc,0,,",
        "d,t2v,fine,,,,,,,,,,,",
        "b,t2v,x,,,,,,,,,,,",
    )
    report = validate_manifest(path)
    assert [where(p) for p in report.problems] == [
        (2, "b", "task"),
        (3, "c", "seed"),
        (3, "c", "steps"),
        (5, "b", "id"),
    ]
    assert report.bad_rows == 3 and report.problem_count == 4


def test_problems_kept_are_capped_but_all_counted(tmp_path):
    rows = [f"r{k},t2v,x,,,,,,,,abc,,," for k in range(MAX_PROBLEMS_KEPT + 5)]
    report = validate_manifest(write_csv(tmp_path, *rows))
    assert len(report.problems) == MAX_PROBLEMS_KEPT
    assert report.problem_count == MAX_PROBLEMS_KEPT + 5


def test_manifest_error_summarises_the_problems(tmp_path):
    path = write_csv(tmp_path, "a,nope,x,,,,,,,,,,,", "b,t2v,x,,,,,,,,-5,,,")
    with pytest.raises(ManifestError) as err:
        validate_manifest(path).raise_for_problems(path)
    assert len(err.value.problems) == 2
    assert "2 problem(s) in 2 of 2 rows" in str(err.value) and "row 2 (id b)" in str(err.value)


def test_parquet_list_cells_are_checked_too(tmp_path, png):
    table = pa.table(
        {
            "id": ["a"],
            "task": ["i2v"],
            "prompt": ["a cat"],
            "image": [str(png)],
            "cond_frames": pa.array([[500]], pa.list_(pa.int64())),
        }
    )
    pq.write_table(table, tmp_path / "m.parquet")
    assert where(only_problem(str(tmp_path / "m.parquet"))) == (1, "a", "cond_frames")


def test_unknown_columns_are_reported_not_fatal(tmp_path):
    path = write_csv(tmp_path, "a,t2v,x,animals", header="id,task,prompt,category")
    report = validate_manifest(path)
    assert report.ok and report.unknown_columns == ["category"]


def test_a_row_with_too_many_cells_is_a_clear_error(tmp_path):
    path = write_csv(tmp_path, "a,t2v,a cat, sitting,0", header="id,task,prompt,seed")
    with pytest.raises(ManifestError, match="more cells than the header"):
        validate_manifest(path)


def test_unknown_extension_is_a_clear_error(tmp_path):
    (tmp_path / "m.xlsx").write_text("x")
    with pytest.raises(ManifestError, match=r"\.csv, \.tsv, \.parquet or \.jsonl"):
        validate_manifest(str(tmp_path / "m.xlsx"))


def test_missing_manifest_is_a_clear_error(tmp_path):
    with pytest.raises(ManifestError, match="not found"):
        validate_manifest(str(tmp_path / "absent.csv"))


@pytest.mark.parametrize("bad_id", [".", "..", ".hidden"])
def test_ids_that_name_hidden_or_parent_paths_are_refused(tmp_path, bad_id):
    path = tmp_path / "m.csv"
    path.write_text(f"id,task,prompt\n{bad_id},t2v,a cat\nok,t2v,a dog\n")
    report = validate_manifest(str(path), check_files=False)
    assert [(p.row, p.column) for p in report.problems] == [(1, "id")]
    assert "the first not a '.'" in report.problems[0].message
