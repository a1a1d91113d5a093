"""VBench export: DEST/videos holds the videos and nothing else; the map and prompt files sit
beside it; re-exports clean up after earlier ones (this layout's and the old in-folder one)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from test_export_support import DONE_IDS, SCRIPT_PROMPT, build_root, commit_item, item_dict

from pusa_batch.cli.main import main
from pusa_batch.errors import ExportError
from pusa_batch.manifest.builders_vbench import vbench_name
from pusa_batch.outputs.vbench import export_vbench
from pusa_batch.store.store import Store


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Store:
    return build_root(tmp_path_factory.mktemp("vbench-root"))


@pytest.fixture(scope="module")
def vbench(root, tmp_path_factory):
    dest = tmp_path_factory.mktemp("vbench")
    return export_vbench(root, dest), dest


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def video_of(store: Store, item_id: str) -> bytes:
    with store.open_video(item_id) as f:
        return f.read()


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def store_of(tmp_path: Path, name: str, items: list[tuple[str, str, int]]) -> Store:
    """A root with these (id, prompt, seed) items, all sharing one small video."""
    store = Store(str(tmp_path / name))
    video = None
    for item_id, prompt, seed in items:
        video = commit_item(store, item_dict(item_id, prompt, seed), video)
    return store


def five(prompt: str, prefix: str) -> list[tuple[str, str, int]]:
    return [(f"{prefix}{seed}", prompt, seed) for seed in range(5)]


# --------------------------------------------------------------------------- layout


def test_the_videos_folder_holds_the_videos_and_nothing_else(vbench):
    _, dest = vbench
    rows = read_jsonl(dest / "vbench_map.jsonl")
    assert sorted(os.listdir(dest / "videos")) == sorted(row["file_name"] for row in rows)
    assert sorted(os.listdir(dest)) == ["vbench_map.jsonl", "videos"]


def test_the_map_names_each_video_by_its_path_beside_the_videos_folder(root, vbench):
    _, dest = vbench
    for row in read_jsonl(dest / "vbench_map.jsonl"):
        assert row["video"] == f"videos/{row['file_name']}" and row["dimension"] is None
        assert (dest / row["video"]).read_bytes() == video_of(root, row["id"])


def test_indices_count_per_prompt_by_seed_then_id(vbench):
    _, dest = vbench
    by_name = {row["file_name"]: row["id"] for row in read_jsonl(dest / "vbench_map.jsonl")}
    assert by_name["a red cat-0.mp4"] == "cat-a"  # seed 1, id cat-a
    assert by_name["a red cat-1.mp4"] == "cat-b"  # seed 1, id cat-b
    assert by_name["a red cat-2.mp4"] == "cat-c"  # seed 3


def test_files_are_named_as_vbench_expects(vbench):
    _, dest = vbench
    for row in read_jsonl(dest / "vbench_map.jsonl"):
        assert row["file_name"] == vbench_name(row["prompt"], row["index"])


def test_slashes_are_sanitised_but_the_prompt_text_is_kept(vbench):
    _, dest = vbench
    rows = {row["id"]: row for row in read_jsonl(dest / "vbench_map.jsonl")}
    assert rows["slash"]["file_name"] == "day_night cycle-0.mp4"
    assert rows["slash"]["prompt"] == "day/night cycle"
    assert rows["clip.v2"]["prompt"] == SCRIPT_PROMPT


def test_only_done_items_with_whole_videos_are_exported(vbench):
    summary, dest = vbench
    assert {row["id"] for row in read_jsonl(dest / "vbench_map.jsonl")} == DONE_IDS
    assert summary.exported == len(DONE_IDS) and summary.skipped == ("short",)
    assert len(os.listdir(dest / "videos")) == len(DONE_IDS)


def test_videos_are_hard_links_on_the_same_filesystem(root, vbench):
    summary, dest = vbench
    assert summary.linked == len(DONE_IDS)
    source = Path(root.root.path("videos/cat-a.mp4"))
    assert os.path.samefile(dest / "videos" / "a red cat-0.mp4", source)


def test_videos_are_copied_from_an_object_store(tmp_path):
    store = Store("memory://vbench-src")
    video = commit_item(store, item_dict("m1", "a boat", 1))
    summary = export_vbench(store, tmp_path)
    assert summary.linked == 0
    assert (tmp_path / "videos" / "a boat-0.mp4").read_bytes() == video


def test_an_empty_prompt_is_refused(tmp_path):
    store = store_of(tmp_path, "out", [("blank", "   ", 1)])
    with pytest.raises(ExportError, match="'blank' has an empty prompt"):
        export_vbench(store, tmp_path / "dest")


@pytest.mark.parametrize("option", [{"mode": "full"}, {"layout": "nested"}])
def test_an_unknown_mode_or_layout_names_the_choices(tmp_path, option):
    store = store_of(tmp_path, "out", [("a", "a boat", 0)])
    with pytest.raises(ExportError, match="use one of"):
        export_vbench(store, tmp_path / "dest", **option)


# --------------------------------------------------------------------------- re-exports


def test_a_reexport_removes_its_stale_videos_and_keeps_other_files(root, tmp_path):
    export_vbench(root, tmp_path)
    (tmp_path / "notes.txt").write_text("mine")
    export_vbench(store_of(tmp_path, "smaller", [("m1", "a boat", 1)]), tmp_path)
    assert os.listdir(tmp_path / "videos") == ["a boat-0.mp4"]
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_a_reexport_over_the_old_in_folder_layout_removes_its_videos_and_map(tmp_path):
    old = tmp_path / "vbench" / "videos"  # exports before this layout wrote into --dest itself
    old.mkdir(parents=True)
    (old / "a fox-0.mp4").write_bytes(b"an old video")
    row = {"file_name": "a fox-0.mp4", "id": "f0", "prompt": "a fox", "index": 0, "seed": 0}
    (old / "vbench_map.jsonl").write_text(json.dumps(row) + "\n")
    export_vbench(store_of(tmp_path, "out", [("m1", "a boat", 1)]), tmp_path / "vbench")
    assert sorted(os.listdir(old)) == ["a boat-0.mp4"]


def test_a_reexport_into_the_old_dest_moves_the_videos_into_videos(tmp_path):
    store = store_of(tmp_path, "out", [("m1", "a boat", 1)])
    dest = tmp_path / "vbench"
    dest.mkdir()
    (dest / "a boat-0.mp4").write_bytes(video_of(store, "m1"))  # as the old layout wrote it
    row = {"file_name": "a boat-0.mp4", "id": "m1", "prompt": "a boat", "index": 0, "seed": 1}
    (dest / "vbench_map.jsonl").write_text(json.dumps(row) + "\n")
    export_vbench(store, dest)
    assert files_under(dest) == ["vbench_map.jsonl", "videos/a boat-0.mp4"]


def test_a_file_left_in_the_videos_folder_is_kept_and_named_in_a_warning(tmp_path):
    store = store_of(tmp_path, "out", five("a boat", "b"))
    (tmp_path / "dest" / "videos").mkdir(parents=True)
    (tmp_path / "dest" / "videos" / "notes.txt").write_text("mine")
    summary = export_vbench(store, tmp_path / "dest")
    assert (tmp_path / "dest" / "videos" / "notes.txt").exists()
    assert len(summary.warnings) == 1
    assert "videos also holds 'notes.txt'" in summary.warnings[0]
    assert "move them out" in summary.warnings[0]


# --------------------------------------------------------------------------- warnings


def test_prompts_with_other_than_five_videos_are_named_in_a_warning(tmp_path):
    items = five("a boat", "b") + [("f0", "a fox", 0), ("f1", "a fox", 1)]
    summary = export_vbench(store_of(tmp_path, "out", items), tmp_path / "dest")
    assert len(summary.warnings) == 1
    assert summary.warnings[0].startswith("1 prompt(s) have other than 5 videos")
    assert summary.warnings[0].endswith(": 'a fox' (2)")


def test_five_videos_per_prompt_give_no_warning(tmp_path):
    items = five("a boat", "b") + five("a fox", "f")
    summary = export_vbench(store_of(tmp_path, "out", items), tmp_path / "dest")
    assert summary.warnings == ()


def test_prompts_a_file_name_cannot_hold_are_named_in_standard_mode(tmp_path):
    summary = export_vbench(store_of(tmp_path, "out", five("day/night", "d")), tmp_path / "dest")
    assert len(summary.warnings) == 1
    assert "will not find them; --vbench-mode custom" in summary.warnings[0]
    assert summary.warnings[0].endswith("'day/night'")


def test_custom_mode_warns_about_neither_counts_nor_names(tmp_path):
    store = store_of(tmp_path, "out", [("d0", "day/night", 0)])
    assert export_vbench(store, tmp_path / "dest", mode="custom").warnings == ()


# --------------------------------------------------------------------------- custom mode


def test_custom_mode_writes_the_video_to_prompt_json_beside_the_videos(root, tmp_path):
    summary = export_vbench(root, tmp_path, mode="custom")
    prompts = json.loads((tmp_path / "vbench_prompts.json").read_text())
    assert sorted(prompts) == sorted(os.listdir(tmp_path / "videos"))
    assert prompts["day_night cycle-0.mp4"] == "day/night cycle"
    assert prompts[vbench_name(SCRIPT_PROMPT, 0)] == SCRIPT_PROMPT
    assert summary.files == ("vbench_map.jsonl", "vbench_prompts.json")


def test_custom_prompt_files_are_ascii_whatever_the_prompt(tmp_path):
    export_vbench(
        store_of(tmp_path, "out", [("c", "un café à Zürich", 0)]), tmp_path / "d", mode="custom"
    )
    raw = (tmp_path / "d" / "vbench_prompts.json").read_bytes()
    assert raw.isascii() and json.loads(raw) == {"un café à Zürich-0.mp4": "un café à Zürich"}


def test_a_standard_reexport_removes_the_custom_prompt_file(tmp_path):
    store = store_of(tmp_path, "out", five("a boat", "b"))
    export_vbench(store, tmp_path / "dest", mode="custom")
    export_vbench(store, tmp_path / "dest")
    assert sorted(os.listdir(tmp_path / "dest")) == ["vbench_map.jsonl", "videos"]


# --------------------------------------------------------------------------- per dimension


@pytest.fixture
def prompts_dir(tmp_path) -> Path:
    """VBench's prompts_per_dimension layout; 'a boat' is in two files, as a few prompts are."""
    folder = tmp_path / "prompts_per_dimension"
    folder.mkdir()
    (folder / "color.txt").write_text("a red boat\na boat")
    (folder / "scene.txt").write_text("a boat\na harbour")
    return folder


@pytest.fixture
def dimension_store(tmp_path) -> Store:
    items = five("a boat", "b") + five("a red boat", "r") + [("x0", "not in VBench", 0)]
    return store_of(tmp_path, "out", items)


def test_per_dimension_puts_each_video_in_every_folder_of_its_prompt(
    dimension_store, prompts_dir, tmp_path
):
    dest = tmp_path / "dest"
    export_vbench(dimension_store, dest, layout="per-dimension", prompts_dir=prompts_dir)
    boats = [f"a boat-{i}.mp4" for i in range(5)]
    assert sorted(os.listdir(dest / "videos" / "scene")) == boats
    assert sorted(os.listdir(dest / "videos" / "color")) == sorted(
        boats + [f"a red boat-{i}.mp4" for i in range(5)]
    )


def test_per_dimension_map_rows_name_the_dimension_and_the_path(
    dimension_store, prompts_dir, tmp_path
):
    dest = tmp_path / "dest"
    export_vbench(dimension_store, dest, layout="per-dimension", prompts_dir=prompts_dir)
    rows = [r for r in read_jsonl(dest / "vbench_map.jsonl") if r["id"] == "b0"]
    assert [(r["dimension"], r["video"]) for r in rows] == [
        ("color", "videos/color/a boat-0.mp4"),
        ("scene", "videos/scene/a boat-0.mp4"),
    ]


def test_per_dimension_leaves_out_prompts_no_file_lists_with_a_warning(
    dimension_store, prompts_dir, tmp_path
):
    dest = tmp_path / "dest"
    summary = export_vbench(dimension_store, dest, layout="per-dimension", prompts_dir=prompts_dir)
    assert summary.exported == 10
    assert sorted(os.listdir(dest / "videos")) == ["color", "scene"]
    assert summary.warnings == (
        "1 prompt(s) are in no VBench prompt file of --vbench-prompts, so their videos are "
        "left out of the per-dimension layout: 'not in VBench'",
    )


def test_per_dimension_needs_the_prompt_files(dimension_store, tmp_path):
    with pytest.raises(ExportError, match="--vbench-prompts"):
        export_vbench(dimension_store, tmp_path / "dest", layout="per-dimension")


def test_per_dimension_custom_mode_writes_one_prompt_file_per_dimension(
    dimension_store, prompts_dir, tmp_path
):
    dest = tmp_path / "dest"
    summary = export_vbench(
        dimension_store, dest, mode="custom", layout="per-dimension", prompts_dir=prompts_dir
    )
    assert summary.files == (
        "vbench_map.jsonl",
        "vbench_prompts/color.json",
        "vbench_prompts/scene.json",
    )
    scene = json.loads((dest / "vbench_prompts" / "scene.json").read_text())
    assert scene == {f"a boat-{i}.mp4": "a boat" for i in range(5)}


def test_a_flat_reexport_removes_the_dimension_folders(dimension_store, prompts_dir, tmp_path):
    dest = tmp_path / "dest"
    export_vbench(dimension_store, dest, layout="per-dimension", prompts_dir=prompts_dir)
    export_vbench(dimension_store, dest)
    assert all(name.endswith(".mp4") for name in os.listdir(dest / "videos"))
    assert len(os.listdir(dest / "videos")) == 11


# --------------------------------------------------------------------------- the command


def test_the_command_prints_the_videos_path_and_the_warnings(tmp_path, capsys):
    store_of(tmp_path, "out", [("f0", "a fox", 0)])
    dest = tmp_path / "dest"
    argv = ["export", str(tmp_path / "out"), "--format", "vbench", "--dest", str(dest)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert f"VBench's --videos_path: {dest}/videos" in printed
    assert "warning: 1 prompt(s) have other than 5 videos" in printed


def test_the_command_writes_the_custom_prompt_file(tmp_path):
    store_of(tmp_path, "out", [("f0", "a fox", 0)])
    argv = ["export", str(tmp_path / "out"), "-f", "vbench", "-o", str(tmp_path / "d")]
    assert main([*argv, "--vbench-mode", "custom"]) == 0
    assert json.loads((tmp_path / "d" / "vbench_prompts.json").read_text()) == {
        "a fox-0.mp4": "a fox"
    }


def test_vbench_options_are_refused_for_other_formats(tmp_path):
    store_of(tmp_path, "out", [("f0", "a fox", 0)])
    argv = ["export", str(tmp_path / "out"), "-f", "hf", "--vbench-mode", "custom"]
    assert main(argv) == 2
