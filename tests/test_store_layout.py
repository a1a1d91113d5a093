"""A local output root is written inside itself only: symlinked layout folders and files given
as roots are refused (exit 2) before anything is written."""

from __future__ import annotations

import os

import pytest

from pusa_batch.errors import UnsafeRootError
from pusa_batch.store.store import Store


@pytest.mark.parametrize("folder", ["items", "videos", "failures", "index", "recent"])
def test_a_symlinked_layout_folder_is_refused_and_nothing_lands_outside(tmp_path, folder):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (tmp_path / "out").mkdir()
    os.symlink(outside, tmp_path / "out" / folder)
    with pytest.raises(UnsafeRootError, match=f"{folder} is a symlink") as refused:
        Store(str(tmp_path / "out")).commit("a", b"video", {"fingerprint": "f"})
    assert refused.value.exit_code == 2 and list(outside.iterdir()) == []


def test_a_file_given_as_the_root_is_refused(tmp_path):
    (tmp_path / "out").write_text("not a folder")
    with pytest.raises(UnsafeRootError, match="is a file"):
        Store(str(tmp_path / "out"))


def test_a_root_under_a_file_is_refused_naming_the_file(tmp_path):
    (tmp_path / "a-file").write_text("not a folder")
    with pytest.raises(UnsafeRootError, match="a-file is a file, so .* cannot be made") as refused:
        Store(str(tmp_path / "a-file" / "deeper" / "out"))
    assert refused.value.exit_code == 2


def test_a_symlinked_root_itself_is_the_users_choice(tmp_path):
    (tmp_path / "real").mkdir()
    os.symlink(tmp_path / "real", tmp_path / "out")
    Store(str(tmp_path / "out")).commit("a", b"video", {"fingerprint": "f"})
    assert (tmp_path / "real" / "videos" / "a.mp4").read_bytes() == b"video"


def test_an_export_destination_that_is_a_file_is_an_export_error(tmp_path):
    from pusa_batch.errors import ExportError
    from pusa_batch.outputs.common import open_destination

    (tmp_path / "dest").write_text("a file")
    with pytest.raises(ExportError, match="is a file") as refused:
        open_destination(str(tmp_path / "dest"), None)
    assert refused.value.exit_code == 2


def test_a_run_to_memory_is_refused_with_the_reason(tmp_path):
    from pathlib import Path

    from pusa_batch.engine.config import RunConfig
    from pusa_batch.engine.run import run
    from pusa_batch.errors import UsageError

    manifest = tmp_path / "m.csv"
    manifest.write_text("id,task,prompt\na,t2v,a cat\n")
    tiny = Path(__file__).resolve().parents[1] / "pipelines" / "tiny.toml"
    with pytest.raises(UsageError, match="memory:// lives inside one process") as refused:
        run(RunConfig(str(manifest), "memory://run1", str(tiny)))
    assert refused.value.exit_code == 2
