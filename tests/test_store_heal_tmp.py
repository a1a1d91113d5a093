"""`.tmp/` (emptied on every start) and `index/quarantine/` are refused when they are symlinks
or resolve outside the root, like the layout folders: nothing outside OUT is ever deleted."""

from __future__ import annotations

import os

import pytest

from pusa_batch.cli.main import main
from pusa_batch.errors import UnsafeRootError
from pusa_batch.store.store import Store


@pytest.fixture
def elsewhere(tmp_path):
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    (folder / "precious.txt").write_text("not pusa-batch's")
    return folder


@pytest.mark.parametrize("folder", [".tmp", "index/quarantine"])
def test_a_symlinked_store_folder_is_refused(tmp_path, elsewhere, folder):
    (tmp_path / "out" / "index").mkdir(parents=True)
    os.symlink(elsewhere, tmp_path / "out" / folder)
    with pytest.raises(UnsafeRootError, match=f"{folder} is a symlink"):
        Store(str(tmp_path / "out"))


def test_a_symlinked_tmp_is_never_emptied(tmp_path, elsewhere):
    (tmp_path / "out").mkdir()
    os.symlink(elsewhere, tmp_path / "out" / ".tmp")
    with pytest.raises(UnsafeRootError):
        Store(str(tmp_path / "out")).clean_temp()  # what every run does once it holds the lease
    assert (elsewhere / "precious.txt").read_text() == "not pusa-batch's"


def test_the_cli_refuses_a_symlinked_tmp_with_exit_2(tmp_path, elsewhere, capsys):
    (tmp_path / "out").mkdir()
    os.symlink(elsewhere, tmp_path / "out" / ".tmp")
    assert main(["status", str(tmp_path / "out")]) == 2
    assert ".tmp is a symlink" in capsys.readouterr().err
