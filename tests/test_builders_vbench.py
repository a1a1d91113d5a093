"""`manifest from-vbench`: VBench's prompts_per_dimension files become t2v rows, seeds 0..4."""

from __future__ import annotations

import re

import pandas as pd
import pytest

from pusa_batch.cli.main import main
from pusa_batch.errors import ManifestError
from pusa_batch.manifest.builders import prompt_id
from pusa_batch.manifest.builders_vbench import from_vbench, read_vbench_suites
from pusa_batch.manifest.read import validate_manifest

# Lines as VBench ships them (prompts/prompts_per_dimension/*.txt, no final newline); the
# Hokusai prompt is in both appearance_style.txt and overall_consistency.txt there too.
HOKUSAI = (
    "A beautiful coastal beach in spring, waves lapping on sand by Hokusai, in the style of Ukiyo"
)
SUITES = {
    "color": ["a red bicycle", "a green bicycle"],
    "appearance_style": ["The bund Shanghai, oil painting", HOKUSAI],
    "overall_consistency": [HOKUSAI, "Close up of grapes on a rotating table."],
    "subject_consistency": ["a person swimming in ocean"],
}


@pytest.fixture
def prompts_dir(tmp_path):
    """VBench's layout: prompts/prompts_per_dimension/{dimension}.txt beside all_dimension.txt."""
    folder = tmp_path / "VBench" / "prompts" / "prompts_per_dimension"
    folder.mkdir(parents=True)
    for dimension, prompts in SUITES.items():
        (folder / f"{dimension}.txt").write_text("\n".join(prompts), encoding="utf-8")
    all_prompts = [p for prompts in SUITES.values() for p in prompts]
    (folder.parent / "all_dimension.txt").write_text("\n".join(all_prompts), encoding="utf-8")
    return folder


def rows(path) -> list[tuple[str, str, str, int]]:
    df = pd.read_parquet(path)
    return list(df[["id", "task", "prompt", "seed"]].itertuples(index=False, name=None))


def test_each_prompt_gets_five_t2v_rows_with_seeds_0_to_4(prompts_dir, tmp_path):
    from_vbench(prompts_dir, tmp_path / "m.parquet", dimensions=["color"])
    assert rows(tmp_path / "m.parquet") == [
        (prompt_id(prompt, seed), "t2v", prompt, seed)
        for prompt in ["a red bicycle", "a green bicycle"]
        for seed in range(5)
    ]


def test_ids_are_the_readable_prompt_ids(prompts_dir, tmp_path):
    from_vbench(prompts_dir, tmp_path / "m.parquet", dimensions=["color"], samples=1)
    ids = [row[0] for row in rows(tmp_path / "m.parquet")]
    assert [re.sub("-[0-9a-f]{8}-", "-HASH-", i) for i in ids] == [
        "a-red-bicycle-HASH-s0",
        "a-green-bicycle-HASH-s0",
    ]


def test_a_prompt_of_several_dimensions_is_built_once(prompts_dir, tmp_path):
    summary = from_vbench(prompts_dir, tmp_path / "m.parquet", samples=1)
    prompts = [row[2] for row in rows(tmp_path / "m.parquet")]
    assert prompts.count(HOKUSAI) == 1
    assert len(prompts) == len(set(prompts)) == 6
    assert any("1 line(s) repeat a prompt" in note for note in summary.notes)


def test_dimension_filters_are_repeatable(prompts_dir, tmp_path):
    from_vbench(prompts_dir, tmp_path / "m.parquet", dimensions=["subject_consistency", "color"])
    prompts = {row[2] for row in rows(tmp_path / "m.parquet")}
    assert prompts == {"a red bicycle", "a green bicycle", "a person swimming in ocean"}


def test_a_dimension_without_its_own_file_uses_the_file_vbench_scores_it_on(prompts_dir, tmp_path):
    from_vbench(prompts_dir, tmp_path / "m.parquet", dimensions=["dynamic_degree"])
    assert {row[2] for row in rows(tmp_path / "m.parquet")} == {"a person swimming in ocean"}


def test_an_unknown_dimension_names_the_files_there_are(prompts_dir, tmp_path):
    with pytest.raises(ManifestError, match="colour.*has: appearance_style, color, "):
        from_vbench(prompts_dir, tmp_path / "m.parquet", dimensions=["colour"])


@pytest.mark.parametrize("level", ["prompts_per_dimension", "prompts", "checkout"])
def test_the_prompt_folder_vbench_prompts_or_the_checkout_all_work(prompts_dir, level):
    given = {"prompts_per_dimension": prompts_dir, "prompts": prompts_dir.parent}
    suites = read_vbench_suites(str(given.get(level, prompts_dir.parent.parent)))
    assert {d: list(p) for d, p in suites.items()} == dict(sorted(SUITES.items()))


def test_a_folder_without_prompt_files_is_an_error(tmp_path):
    with pytest.raises(ManifestError, match="no VBench prompt files"):
        from_vbench(tmp_path, tmp_path / "m.parquet")


def test_the_manifest_validates_and_the_cli_builds_it(prompts_dir, tmp_path, capsys):
    out = tmp_path / "m.parquet"
    argv = ["manifest", "from-vbench", str(prompts_dir), "--dimension", "color"]
    assert main([*argv, "--dimension", "dynamic_degree", "--samples", "2", "-o", str(out)]) == 0
    assert "wrote 6 row(s)" in capsys.readouterr().out
    assert validate_manifest(str(out)).ok
