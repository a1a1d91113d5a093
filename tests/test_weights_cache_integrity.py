"""A staged weight file is trusted only as it was verified: bytes written into the cached copy
since (same size or not) make the next staging fetch it again, never load it."""

from __future__ import annotations

import os
from pathlib import Path

from pusa_batch.weights import SourceRequest, StagingConfig, WeightURL, stage_sources


def source(folder: Path) -> WeightURL:
    folder.mkdir()
    (folder / "weights.bin").write_bytes(os.urandom(200_000))
    (folder / "config.json").write_text('{"dim": 8}')
    return WeightURL(folder.resolve().as_uri())


def stage(cache: Path, url: WeightURL) -> Path:
    (staged,) = stage_sources([SourceRequest(url)], StagingConfig(cache=cache))
    return staged


def scribble(path: Path) -> None:
    """Overwrite 1000 bytes in the middle, keeping the size."""
    with path.open("r+b") as handle:
        handle.seek(100_000)
        handle.write(os.urandom(1000))


def test_a_cached_file_written_into_at_the_same_size_is_fetched_again(tmp_path):
    url = source(tmp_path / "src")
    cache = tmp_path / "cache"
    scribble(stage(cache, url) / "weights.bin")
    staged = stage(cache, url)
    assert (staged / "weights.bin").read_bytes() == (tmp_path / "src" / "weights.bin").read_bytes()


def test_an_untouched_cache_is_used_as_it_is(tmp_path):
    url = source(tmp_path / "src")
    cache = tmp_path / "cache"
    first = stage(cache, url) / "weights.bin"
    inode = first.stat().st_ino
    assert (stage(cache, url) / "weights.bin").stat().st_ino == inode  # not fetched again


def test_the_other_files_of_a_source_stay_when_one_is_fetched_again(tmp_path):
    url = source(tmp_path / "src")
    cache = tmp_path / "cache"
    staged = stage(cache, url)
    config_inode = (staged / "config.json").stat().st_ino
    scribble(staged / "weights.bin")
    again = stage(cache, url)
    assert (again / "config.json").stat().st_ino == config_inode
    assert (again / "weights.bin").read_bytes() == (tmp_path / "src" / "weights.bin").read_bytes()
