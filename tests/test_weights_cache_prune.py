"""`pusa-batch cache list` and `cache prune`: what the node's weight cache holds, and trimming it
without ever pulling weights from under a run that is staging or has just staged them.

Sources are folders on a shared file system (`file://` URLs), staged by the real staging code."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

from pusa_batch.cli.main import main
from pusa_batch.weights import SourceRequest, StagingConfig, WeightURL, stage_sources
from pusa_batch.weights.cache import file_lock
from pusa_batch.weights.prune import (
    PruneRule,
    cache_entries,
    parse_duration,
    parse_size,
    prune,
)

DAY = 86400.0


def make_source(folder: Path, files: dict[str, int]) -> WeightURL:
    for name, size in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(size))
    return WeightURL(folder.resolve().as_uri())


def stage(cache: Path, *urls: WeightURL) -> list[Path]:
    return stage_sources([SourceRequest(u) for u in urls], StagingConfig(cache=cache))


def backdate(cache: Path, seconds: float) -> None:
    """Make everything in the cache look `seconds` older: files' mtimes and use records."""
    for root, dirs, files in os.walk(cache):
        for name in dirs + files:
            path = Path(root) / name
            info = path.lstat()
            os.utime(
                path, (info.st_atime - seconds, info.st_mtime - seconds), follow_symlinks=False
            )
    for kind in ("trees", "headers"):
        for record in (cache / kind).glob("*.json"):
            data = json.loads(record.read_text())
            data["last_used"] -= seconds
            record.write_text(json.dumps(data))


def cache_bytes(cache: Path) -> int:
    """Bytes on disk under `cache`, each inode once (trees hard-link blobs)."""
    seen = {}
    for root, _, files in os.walk(cache):
        for name in files:
            info = (Path(root) / name).lstat()
            seen[info.st_ino] = info.st_blocks * 512
    return sum(seen.values())


@pytest.fixture
def cache(tmp_path) -> Path:
    return tmp_path / "cache"


@pytest.fixture
def old_and_new(tmp_path, cache) -> tuple[WeightURL, WeightURL]:
    """Two staged sources: `old` last used 40 days ago, `new` just now."""
    old = make_source(tmp_path / "old", {"model.bin": 300_000, "config.json": 100})
    new = make_source(tmp_path / "new", {"model.bin": 200_000, "config.json": 100})
    stage(cache, old)
    backdate(cache, 40 * DAY)
    stage(cache, new)
    return old, new


def urls(cache: Path) -> list[str]:
    return [e.url for e in cache_entries(StagingConfig(cache=cache).layout())]


def test_each_staging_records_the_source_url_and_when_it_was_used(tmp_path, cache):
    url = make_source(tmp_path / "src", {"a.bin": 1000, "sub/b.json": 10})
    before = time.time()
    stage(cache, url)
    (entry,) = cache_entries(StagingConfig(cache=cache).layout())
    assert entry.kind == "trees" and entry.url == str(url)
    assert entry.bytes >= 1010 and entry.last_used >= before


def test_a_warm_staging_moves_the_last_use_forward(tmp_path, cache):
    url = make_source(tmp_path / "src", {"a.bin": 1000})
    stage(cache, url)
    backdate(cache, 5 * DAY)
    stage(cache, url)
    (entry,) = cache_entries(StagingConfig(cache=cache).layout())
    assert time.time() - entry.last_used < 60


def test_cache_list_shows_each_source_most_recent_first(old_and_new, cache, capsys):
    old, new = old_and_new
    assert main(["cache", "list", "--cache", str(cache), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [e["url"] for e in listed["entries"]] == [str(new), str(old)]
    assert listed["entries"][1]["last_used"] == "40d ago"
    assert listed["bytes"] == 300_100 + 200_100  # the weights' bytes, each blob once


def test_cache_list_in_words_names_the_url_the_age_and_the_total(old_and_new, cache, capsys):
    old, _ = old_and_new
    assert main(["cache", "list", "--cache", str(cache)]) == 0
    text = capsys.readouterr().out
    assert str(old) in text and "40d ago" in text and "2 entries" in text


def test_prune_older_than_removes_the_unused_source_and_its_blobs(old_and_new, cache, capsys):
    old, new = old_and_new
    before = cache_bytes(cache)
    assert main(["cache", "prune", "--cache", str(cache), "--older-than", "30d"]) == 0
    assert urls(cache) == [str(new)]
    freed = before - cache_bytes(cache)
    assert freed >= 300_000  # the old model's blob went with its tree
    assert "removed 1 entry" in capsys.readouterr().out


def test_prune_with_no_option_keeps_what_was_used_within_30_days(tmp_path, cache):
    url = make_source(tmp_path / "src", {"a.bin": 5000})
    stage(cache, url)
    backdate(cache, 29 * DAY)
    assert main(["cache", "prune", "--cache", str(cache)]) == 0
    assert urls(cache) == [str(url)]
    backdate(cache, 2 * DAY)
    assert main(["cache", "prune", "--cache", str(cache)]) == 0
    assert urls(cache) == []


def test_a_dry_run_says_what_would_go_and_removes_nothing(old_and_new, cache, capsys):
    old, new = old_and_new
    before = cache_bytes(cache)
    assert main(["cache", "prune", "--cache", str(cache), "--older-than", "30d", "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "would remove" in text and str(old) in text and str(new) not in text
    assert cache_bytes(cache) == before and len(urls(cache)) == 2


def test_max_size_removes_the_least_recently_used_first(tmp_path, cache):
    first = make_source(tmp_path / "a", {"w.bin": 100_000})
    second = make_source(tmp_path / "b", {"w.bin": 100_000})
    third = make_source(tmp_path / "c", {"w.bin": 100_000})
    for url in (first, second, third):
        stage(cache, url)
        backdate(cache, DAY)  # each staged a day after the one before
    prune(StagingConfig(cache=cache).layout(), PruneRule(max_bytes=parse_size("250kB")))
    assert urls(cache) == [str(second), str(third)]
    assert cache_bytes(cache) <= 250_000


def test_a_blob_another_source_still_links_is_kept(tmp_path, cache):
    """A folder whose one file changed is a new tree; the unchanged file's blob is shared."""
    folder = tmp_path / "src"
    url = make_source(folder, {"unchanged.bin": 50_000, "changed.bin": 70_000})
    stage(cache, url)
    backdate(cache, 40 * DAY)
    time.sleep(0.01)
    (folder / "changed.bin").write_bytes(os.urandom(70_001))  # new size: a new version
    (staged,) = stage(cache, url)
    prune(StagingConfig(cache=cache).layout(), PruneRule(older_than_s=30 * DAY))
    assert len(urls(cache)) == 1
    assert (staged / "unchanged.bin").read_bytes() == (folder / "unchanged.bin").read_bytes()
    assert (staged / "changed.bin").stat().st_size == 70_001
    assert cache_bytes(cache) < 50_000 + 2 * 70_000  # the old changed.bin blob is gone


def test_nothing_used_in_the_last_ten_minutes_is_removed_even_with_all(tmp_path, cache):
    url = make_source(tmp_path / "src", {"a.bin": 5000})
    (staged,) = stage(cache, url)
    assert main(["cache", "prune", "--cache", str(cache), "--all"]) == 0
    assert urls(cache) == [str(url)] and (staged / "a.bin").stat().st_size == 5000


def test_all_removes_every_entry_past_the_grace(old_and_new, cache):
    backdate(cache, 3600)
    assert main(["cache", "prune", "--cache", str(cache), "--all"]) == 0
    assert urls(cache) == [] and not list((cache / "blobs").glob("??/" + "?" * 64))


def test_an_entry_whose_lock_is_held_is_kept_and_named(old_and_new, cache, capsys):
    old_entry = cache_entries(StagingConfig(cache=cache).layout())[0]  # least recent first
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with file_lock(cache / "trees" / f"{old_entry.key}.lock"):
            held.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    held.wait(10)
    try:
        assert main(["cache", "prune", "--cache", str(cache), "--older-than", "30d"]) == 0
    finally:
        release.set()
        holder.join()
    assert len(urls(cache)) == 2
    assert f"kept trees/{old_entry.key}: a run is staging it now" in capsys.readouterr().out


def test_a_pruned_source_is_staged_again_on_the_next_run(old_and_new, tmp_path, cache):
    old, _ = old_and_new
    prune(StagingConfig(cache=cache).layout(), PruneRule(older_than_s=30 * DAY))
    (staged,) = stage(cache, old)
    assert (staged / "model.bin").read_bytes() == (tmp_path / "old" / "model.bin").read_bytes()


def test_dead_partial_downloads_and_half_built_trees_are_removed(old_and_new, cache):
    blobs = cache / "blobs" / "ab"
    blobs.mkdir(parents=True, exist_ok=True)
    part = blobs / ("ab" + "0" * 62 + ".part")
    part.write_bytes(b"x" * 1000)
    (part.parent / (part.name + ".json")).write_text("{}")
    leftover = cache / "trees" / ".tmp-0123456789abcdef-00000000"
    leftover.mkdir()
    backdate(cache, 40 * DAY)
    prune(StagingConfig(cache=cache).layout(), PruneRule(older_than_s=30 * DAY))
    assert not part.exists() and not leftover.exists()


@pytest.mark.parametrize(
    ("flag", "value", "named"),
    [("--older-than", "soon", "--older-than 'soon'"), ("--max-size", "lots", "--max-size 'lots'")],
)
def test_an_unreadable_duration_or_size_is_exit_2_naming_the_flag(
    cache, capsys, flag, value, named
):
    assert main(["cache", "prune", "--cache", str(cache), flag, value]) == 2
    assert named in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "seconds"), [("30d", 30 * DAY), ("12h", 43200), ("90m", 5400), ("2", 2 * DAY)]
)
def test_durations_read_as_a_user_writes_them(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("text", "size"), [("200GB", 200 * 10**9), ("1.5T", 1.5e12), ("500MiB", 500 * 2**20), ("0", 0)]
)
def test_sizes_read_as_a_user_writes_them(text, size):
    assert parse_size(text) == size


def test_an_empty_or_missing_cache_lists_as_empty(cache, capsys):
    assert main(["cache", "list", "--cache", str(cache)]) == 0
    assert "empty" in capsys.readouterr().out
    assert main(["cache", "prune", "--cache", str(cache), "--all"]) == 0
