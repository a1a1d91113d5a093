"""Ids that differ only in case (`Cat`, `cat`) are one file on a case-insensitive output root
(macOS, Windows, some SMB shares): there they are duplicates, refused before anything runs;
elsewhere they stay two items."""

from __future__ import annotations

import os

from pusa_batch.cli.main import main
from pusa_batch.manifest.read import validate_manifest
from pusa_batch.store.store import Store, folds_case

TINY = os.path.join(os.path.dirname(__file__), "..", "pipelines", "tiny.toml")


def manifest(tmp_path, *ids: str):
    path = tmp_path / "m.csv"
    path.write_text("id,task,prompt\n" + "".join(f"{i},t2v,a cat\n" for i in ids), "utf-8")
    return str(path)


def test_ids_differing_in_case_are_duplicates_where_names_ignore_case(tmp_path):
    [problem] = validate_manifest(manifest(tmp_path, "Cat", "cat"), fold_case=True).problems
    assert problem.row == 2 and "does not tell ids apart by case" in problem.message


def test_ids_differing_in_case_are_two_items_on_a_case_sensitive_root(tmp_path):
    assert validate_manifest(manifest(tmp_path, "Cat", "cat")).ok


def test_this_machines_tmp_tells_case_apart(tmp_path):
    assert not folds_case(str(tmp_path / "Out"))
    assert not Store(str(tmp_path / "Out")).names_ignore_case()


def test_a_folder_whose_swapped_name_is_the_same_folder_ignores_case(tmp_path):
    (tmp_path / "Volume").mkdir()
    (tmp_path / "vOLUME").symlink_to(tmp_path / "Volume")  # what such a file system answers
    assert folds_case(str(tmp_path / "Volume" / "new-root" / "deeper"))


def test_run_refuses_case_twins_on_a_root_that_ignores_case(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(Store, "names_ignore_case", lambda self: True)
    out = tmp_path / "out"
    code = main(["run", manifest(tmp_path, "Cat", "cat"), "-o", str(out), "-p", TINY, "-q"])
    assert code == 2
    assert "duplicate id 'cat', also on row 1" in capsys.readouterr().err
    assert not out.exists()
