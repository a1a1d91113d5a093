"""Manifest builders, exercised on real folders and prompt files and read back with pandas."""

from __future__ import annotations

import hashlib
import json
import re
import tracemalloc

import pandas as pd
import pytest
from PIL import Image

from pusa_batch.errors import ManifestError
from pusa_batch.manifest import builders
from pusa_batch.manifest.builders import from_folder, from_prompts, safe_id
from pusa_batch.manifest.builders_sweep import parse_grid, sweep
from pusa_batch.manifest.builders_vbench import vbench_name
from pusa_batch.manifest.read import iter_items
from pusa_batch.manifest.schema import ID_PATTERN
from pusa_batch.manifest.write import write_manifest

ID_CHARS = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")


def read(path) -> pd.DataFrame:
    path = str(path)
    if path.endswith(".parquet"):
        return pd.read_parquet(path)
    if path.endswith(".csv"):
        return pd.read_csv(path, dtype={"id": str})
    return pd.read_json(path, lines=True, dtype={"id": str}, precise_float=True)


def image(path, size=(24, 16)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (90, 30, 200)).save(path)


def text(path, content: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content, encoding="utf-8")


@pytest.fixture
def folder(tmp_path):
    """Mixed extensions, nested dirs, a unicode name, a duplicate stem; prompts beside images."""
    root = tmp_path / "images"
    for rel in ["cat.png", "cat.jpg", "a/b/dog.PNG", "a/b/owl.webp", "猫.jpeg", "Zürich.bmp"]:
        image(root / rel)
    for rel, prompt in [
        ("cat.txt", "a cat"),
        ("a/b/dog.txt", "a dog\n"),
        ("a/b/owl.txt", "an owl"),
        ("猫.txt", "a cat in Kyoto"),
        ("Zürich.txt", "a lake"),
    ]:
        text(root / rel, prompt)
    return root


# --------------------------------------------------------------------------- from_folder


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".jsonl"])
def test_folder_rows_read_back_in_every_format(folder, tmp_path, suffix):
    out = tmp_path / f"manifest{suffix}"
    summary = from_folder(folder, out, num_frames=21, noise_multipliers=[0.3])
    df = read(out)
    assert summary.rows == len(df) == 6
    assert summary.task_counts == {"i2v": 6}
    assert set(df["task"]) == {"i2v"}
    assert set(df["num_frames"]) == {21}
    multipliers = df["noise_multipliers"].map(
        lambda v: list(json.loads(v) if isinstance(v, str) else v)
    )
    assert multipliers.tolist() == [[0.3]] * 6
    assert summary.validated


def test_prompts_pair_by_relative_stem(folder, tmp_path):
    out = tmp_path / "m.parquet"
    from_folder(folder, out)
    df = read(out).set_index("id")
    assert df.loc["a__b__dog", "prompt"] == "a dog"
    assert df.loc["a__b__owl", "prompt"] == "an owl"
    assert df.loc["a__b__dog", "image"].endswith("a/b/dog.PNG")


def test_ids_are_safe_unique_and_transliterated(folder, tmp_path):
    out = tmp_path / "m.parquet"
    from_folder(folder, out)
    df = read(out)
    ids = df["id"].tolist()
    assert len(set(ids)) == len(ids)
    assert all(set(i) <= ID_CHARS and len(i) <= 128 for i in ids)
    by_prompt = df.set_index("prompt")["id"]
    assert by_prompt["a lake"] == "Zurich"  # transliterated, nothing lost: no hash
    assert re.fullmatch(r"[0-9a-f]{8}", by_prompt["a cat in Kyoto"])  # 猫 cannot be spelled


def test_duplicate_stems_keep_both_with_extension_ids(folder, tmp_path):
    out = tmp_path / "m.csv"
    summary = from_folder(folder, out)
    df = read(out).set_index("id")
    assert df.loc["cat.png", "prompt"] == df.loc["cat.jpg", "prompt"] == "a cat"
    assert "cat" not in df.index
    assert any("cat.jpg, cat.png" in note for note in summary.notes)


def test_ids_are_stable_across_reruns(folder, tmp_path):
    from_folder(folder, tmp_path / "one.parquet")
    from_folder(folder, tmp_path / "two.parquet")
    assert read(tmp_path / "one.parquet").equals(read(tmp_path / "two.parquet"))


def test_missing_prompt_and_orphan_prompt_are_skipped_and_listed(folder, tmp_path):
    image(folder / "lonely.png")
    text(folder / "orphan.txt", "nobody uses me")
    summary = from_folder(folder, tmp_path / "m.parquet")
    assert summary.rows == 6
    sources = {s.source: s.reason for s in summary.skipped}
    assert "no prompt file" in sources["lonely.png"]
    assert "without an image" in sources["orphan.txt"]


def test_strict_turns_unpaired_files_into_an_error_naming_them(folder, tmp_path):
    image(folder / "lonely.png")
    out = tmp_path / "m.parquet"
    with pytest.raises(ManifestError, match="lonely.png"):
        from_folder(folder, out, strict=True)
    assert not out.exists()


def test_empty_prompt_file_is_skipped_never_reusing_another_prompt(folder, tmp_path):
    image(folder / "b_blank.png")
    text(folder / "b_blank.txt", "  \n\n")
    summary = from_folder(folder, tmp_path / "m.parquet")
    assert "b_blank" not in read(tmp_path / "m.parquet")["id"].tolist()
    assert any(s.source == "b_blank.png" and "empty" in s.reason for s in summary.skipped)


def test_separate_prompts_dir_mirrors_the_image_tree(tmp_path):
    image(tmp_path / "imgs/x/y/fox.jpg")
    text(tmp_path / "prompts/x/y/fox.txt", "a fox")
    text(tmp_path / "imgs/x/y/fox.txt", "ignored: prompts come from prompts_dir")
    from_folder(tmp_path / "imgs", tmp_path / "m.jsonl", prompts_dir=tmp_path / "prompts")
    assert read(tmp_path / "m.jsonl")["prompt"].tolist() == ["a fox"]


def test_image_paths_are_relative_when_under_the_manifest_folder(folder):
    out = folder / "manifest.parquet"
    from_folder(folder, out)
    df = read(out)
    assert "a/b/dog.PNG" in df["image"].tolist()
    items = {item.id: item for item in iter_items(str(out))}
    assert items["a__b__dog"].images == (str(folder / "a/b/dog.PNG"),)


def test_hidden_files_are_skipped(folder, tmp_path):
    image(folder / "._cat.jpg")
    summary = from_folder(folder, tmp_path / "m.parquet")
    assert summary.rows == 6
    assert any(s.source == "._cat.jpg" for s in summary.skipped)


def test_unreadable_image_fails_validation_naming_the_row(folder, tmp_path):
    (folder / "cat.png").write_bytes(b"not a png")
    with pytest.raises(ManifestError, match="cat.png"):
        from_folder(folder, tmp_path / "m.parquet")


# --------------------------------------------------------------------------- from_prompts


def test_txt_prompts_skip_blanks_and_comments(tmp_path):
    text(tmp_path / "p.txt", "# header\na red fox\n\n   \nan old tram\n")
    summary = from_prompts(tmp_path / "p.txt", tmp_path / "m.csv")
    df = read(tmp_path / "m.csv")
    assert df["prompt"].tolist() == ["a red fox", "an old tram"]
    assert summary.task_counts == {"t2v": 2}


def test_one_row_per_prompt_and_seed(tmp_path):
    text(tmp_path / "p.txt", "a\nb\n")
    from_prompts(tmp_path / "p.txt", tmp_path / "m.parquet", seeds_per_prompt=3, seed_start=10)
    df = read(tmp_path / "m.parquet")
    assert list(zip(df["prompt"], df["seed"], strict=True)) == [
        (p, s) for p in "ab" for s in (10, 11, 12)
    ]
    assert df["id"].is_unique


def test_prompt_ids_are_stable_when_prompts_are_appended(tmp_path):
    text(tmp_path / "p.txt", "a fox\na tram\na fox\n")
    from_prompts(tmp_path / "p.txt", tmp_path / "one.parquet", seeds_per_prompt=2)
    text(tmp_path / "p.txt", "a fox\na tram\na fox\na boat\na fox\n")
    from_prompts(tmp_path / "p.txt", tmp_path / "two.parquet", seeds_per_prompt=2)
    one, two = read(tmp_path / "one.parquet"), read(tmp_path / "two.parquet")
    assert two["id"].tolist()[: len(one)] == one["id"].tolist()
    assert two["id"].is_unique


def test_duplicate_prompts_get_distinct_ids(tmp_path):
    text(tmp_path / "p.txt", "same\nsame\n")
    from_prompts(tmp_path / "p.txt", tmp_path / "m.parquet")
    first, second = read(tmp_path / "m.parquet")["id"].tolist()
    assert re.fullmatch(r"same-[0-9a-f]{8}-s0", first)
    assert second == first.replace("-s0", ".1-s0")


def test_prompt_ids_read_like_the_prompt_then_its_hash_and_seed(tmp_path):
    text(tmp_path / "p.txt", "A red fox, in snow!\n")
    from_prompts(tmp_path / "p.txt", tmp_path / "m.parquet", seeds_per_prompt=2)
    digest = hashlib.sha1(b"A red fox, in snow!").hexdigest()[:8]
    assert read(tmp_path / "m.parquet")["id"].tolist() == [
        f"a-red-fox-in-snow-{digest}-s0",
        f"a-red-fox-in-snow-{digest}-s1",
    ]


def test_prompt_ids_depend_on_the_prompt_not_its_line(tmp_path):
    text(tmp_path / "one.txt", "a fox\na tram\n")
    text(tmp_path / "two.txt", "a boat\na tram\na fox\n")
    from_prompts(tmp_path / "one.txt", tmp_path / "one.parquet")
    from_prompts(tmp_path / "two.txt", tmp_path / "two.parquet")
    one = dict(read(tmp_path / "one.parquet")[["prompt", "id"]].values)
    two = dict(read(tmp_path / "two.parquet")[["prompt", "id"]].values)
    assert one == {p: two[p] for p in one}


@pytest.mark.parametrize(
    "prompt, slug",
    [
        ("Café au lait, Zürich", "cafe-au-lait-zurich"),
        ("猫が走る", "p"),
        (".hidden/../path", "hidden-path"),
        ("a " + "very " * 20 + "long prompt", "a" + "-very" * 7),  # whole words, <= 40
        ("x" * 60, "x" * 40),
    ],
)
def test_prompt_slugs_are_short_safe_words(prompt, slug):
    assert builders.prompt_slug(prompt) == slug
    assert re.fullmatch(ID_PATTERN, builders.prompt_id(prompt, 0))


def test_jsonl_prompts_carry_their_own_columns(tmp_path):
    rows = [{"prompt": "a", "steps": 12}, {"prompt": "b", "seed": 7, "id": "mine"}]
    text(tmp_path / "p.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    from_prompts(tmp_path / "p.jsonl", tmp_path / "m.parquet", num_frames=21)
    df = read(tmp_path / "m.parquet").set_index("prompt")
    assert df.loc["a", "steps"] == 12 and df.loc["b", "seed"] == 7
    assert df.loc["b", "id"] == "mine"
    assert set(df["num_frames"]) == {21}


def test_csv_prompts_need_a_prompt_column(tmp_path):
    text(tmp_path / "p.csv", "caption\na fox\n")
    with pytest.raises(ManifestError, match="prompt"):
        from_prompts(tmp_path / "p.csv", tmp_path / "m.parquet")


def test_csv_empty_prompt_is_skipped_with_its_row(tmp_path):
    text(tmp_path / "p.csv", "prompt,steps\na fox,10\n,20\n")
    summary = from_prompts(tmp_path / "p.csv", tmp_path / "m.parquet")
    assert summary.rows == 1
    assert [s.source.rsplit(":", 1)[1] for s in summary.skipped] == ["2"]


def test_200k_prompts_build_into_200k_rows(tmp_path):
    path = tmp_path / "big.txt"
    path.write_text("".join(f"prompt number {i} of a long list\n" for i in range(200_000)))
    summary = from_prompts(path, tmp_path / "big.parquet", validate=False)
    assert summary.rows == 200_000


def test_prompt_memory_does_not_grow_with_the_file(tmp_path, monkeypatch):
    monkeypatch.setattr(builders, "CHUNK_ROWS", 500)

    def peak(lines: int) -> int:
        path = tmp_path / f"p{lines}.txt"
        path.write_text("".join(f"prompt {i} " + "x" * 200 + "\n" for i in range(lines)))
        tracemalloc.start()
        from_prompts(path, tmp_path / f"p{lines}.jsonl", validate=False)
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return top

    small, large = peak(1_500), peak(15_000)
    assert large < small * 2  # 10x the prompts, not 10x the memory


# --------------------------------------------------------------------------- sweep


def test_parse_grid_forms():
    assert parse_grid("steps=10,20,30") == ("steps", [10, 20, 30])
    assert parse_grid("seed=0..4") == ("seed", [0, 1, 2, 3, 4])
    assert parse_grid("noise_multipliers=[0.0,0.2],[0.2,0.5]") == (
        "noise_multipliers",
        [[0.0, 0.2], [0.2, 0.5]],
    )
    assert parse_grid("task=i2v,t2v") == ("task", ["i2v", "t2v"])


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("steps", "column=values"),
        ("=1,2", "column=values"),
        ("seed=4..0", "empty"),
        ("steps=10,10", "repeated"),
        ("noise_multipliers=[0.1,", "JSON"),
        ("id=a,b", "id"),
    ],
)
def test_parse_grid_errors_say_what_to_write(spec, message):
    with pytest.raises(ManifestError, match=message):
        parse_grid(spec)


def test_sweep_cardinality_and_ids(tmp_path):
    text(tmp_path / "base.csv", "id,task,prompt\nfox,t2v,a fox\ntram,t2v,a tram\n")
    grid = dict([parse_grid("steps=10,20,30"), parse_grid("seed=0..1")])
    summary = sweep(tmp_path / "base.csv", tmp_path / "s.parquet", grid)
    df = read(tmp_path / "s.parquet")
    assert summary.rows == len(df) == 2 * 3 * 2
    assert df["id"].is_unique
    assert df["id"].iloc[0] == "fox--steps_10--seed_0"
    assert set(df["steps"]) == {10, 20, 30}


def test_sweep_without_base_ids_leaves_ids_to_the_manifest(tmp_path):
    text(tmp_path / "base.csv", "task,prompt\nt2v,a fox\n")
    sweep(tmp_path / "base.csv", tmp_path / "s.jsonl", {"guidance_scale": [1.0, 5.0]})
    items = list(iter_items(str(tmp_path / "s.jsonl")))
    assert len({item.id for item in items}) == 2


def test_sweep_ids_are_capped_at_128_characters(tmp_path):
    text(tmp_path / "base.csv", "id,task,prompt\n" + "x" * 120 + ",t2v,a fox\n")
    sweep(tmp_path / "base.csv", tmp_path / "s.parquet", {"steps": [10, 20]})
    ids = read(tmp_path / "s.parquet")["id"].tolist()
    assert all(len(i) <= 128 for i in ids) and len(set(ids)) == 2


def test_sweep_of_list_values_gives_readable_ids(tmp_path):
    text(tmp_path / "base.jsonl", json.dumps({"id": "a", "task": "t2v", "prompt": "p"}) + "\n")
    grid = dict([parse_grid("cond_frames=[0],[0,-1]")])
    sweep(tmp_path / "base.jsonl", tmp_path / "s.parquet", grid, validate=False)
    df = read(tmp_path / "s.parquet")
    assert df["id"].tolist() == ["a--cond_frames_0", "a--cond_frames_0_-1"]
    assert [list(v) for v in df["cond_frames"]] == [[0], [0, -1]]


# --------------------------------------------------------------------------- names and writing


def test_safe_id_transliterates_or_hashes():
    assert safe_id("café au lait") == "cafe_au_lait"
    assert set(safe_id("猫")) <= ID_CHARS and safe_id("猫") != safe_id("犬")


def test_vbench_name_keeps_the_prompt_verbatim_when_safe():
    assert vbench_name("A 3D model of a 1800s victorian house.", 2) == (
        "A 3D model of a 1800s victorian house.-2.mp4"
    )
    assert vbench_name("cats/dogs", 0) == "cats_dogs-0.mp4"


def test_vbench_name_truncates_long_prompts_to_255_bytes_uniquely():
    a, b = "é" * 300 + "a", "é" * 300 + "b"
    names = [vbench_name(a, 0), vbench_name(b, 0)]
    assert all(len(n.encode("utf-8")) <= 255 and n.endswith("-0.mp4") for n in names)
    assert names[0] != names[1]


def test_write_manifest_rejects_unknown_suffix(tmp_path):
    with pytest.raises(ManifestError, match=".parquet, .csv or .jsonl"):
        write_manifest([{"task": "t2v", "prompt": "a"}], tmp_path / "m.xlsx")


def test_write_manifest_names_bad_cells(tmp_path):
    rows = [
        {"task": "t2v", "prompt": "a", "steps": 10},
        {"task": "t2v", "prompt": "b", "steps": "x"},
    ]
    with pytest.raises(ManifestError) as info:
        write_manifest(rows, tmp_path / "m.parquet")
    assert [(p.row, p.column) for p in info.value.problems] == [(2, "steps")]
    assert not (tmp_path / "m.parquet").exists()


def test_write_manifest_streams_many_chunks(tmp_path):
    rows = ({"task": "t2v", "prompt": f"p{i}", "seed": i} for i in range(2500))
    assert write_manifest(rows, tmp_path / "m.csv", chunk_rows=1000) == 2500
    assert read(tmp_path / "m.csv")["seed"].tolist() == list(range(2500))
