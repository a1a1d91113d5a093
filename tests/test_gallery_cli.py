"""`pusa-batch gallery` as a user meets it: where the page goes, the old -o spelling, grouping,
and a missing root (exit 2, named, nothing created)."""

from __future__ import annotations

import pytest
from gallery_support import read_page
from test_export_support import commit_item, item_dict

from pusa_batch.cli.main import main
from pusa_batch.store.store import Store


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli") / "out"
    store = Store(str(folder))
    commit_item(store, item_dict("fox-1", "a fox", 1))
    commit_item(store, item_dict("fox-2", "a fox", 2, row=2))
    return folder


def test_html_names_the_page_to_write(root, tmp_path, capsys):
    page = tmp_path / "review.html"
    assert main(["gallery", str(root), "--html", str(page)]) == 0
    assert ids_of(page) == ["fox-1", "fox-2"]
    assert f"wrote {page}: 2 done, 0 failed item(s), grouped by prompt" in capsys.readouterr().out


def test_without_html_the_page_is_gallery_html_in_the_root(root, capsys):
    assert main(["gallery", str(root)]) == 0
    assert (root / "gallery.html").is_file()


def test_html_naming_a_folder_writes_gallery_html_inside_it(root, tmp_path):
    folder = tmp_path / "pages"
    folder.mkdir()
    assert main(["gallery", str(root), "--html", str(folder)]) == 0
    assert ids_of(folder / "gallery.html") == ["fox-1", "fox-2"]


@pytest.mark.parametrize("spelling", ["-o", "--output"])
def test_the_old_output_spelling_still_works_with_a_notice(root, tmp_path, capsys, spelling):
    page = tmp_path / "old.html"
    assert main(["gallery", str(root), spelling, str(page)]) == 0
    captured = capsys.readouterr()
    assert page.is_file()
    assert "deprecated here; use --html PAGE" in captured.err and "deprecated" not in captured.out


def test_html_and_output_together_are_refused(root, tmp_path, capsys):
    args = [
        "gallery",
        str(root),
        "--html",
        str(tmp_path / "a.html"),
        "-o",
        str(tmp_path / "b.html"),
    ]
    assert main(args) == 2
    assert not (tmp_path / "a.html").exists() and not (tmp_path / "b.html").exists()


def test_group_by_none_writes_one_flat_grid(root, tmp_path, capsys):
    page = tmp_path / "flat.html"
    assert main(["gallery", str(root), "--html", str(page), "--group-by", "none"]) == 0
    (group,) = read_page(page).groups
    assert "flat" in group.classes()


def test_an_unknown_group_by_exits_2_listing_the_choices(root, tmp_path, capsys):
    assert main(["gallery", str(root), "--html", str(tmp_path / "x.html"), "--group-by", "x"]) == 2
    assert "'x' is not one of 'auto', 'prompt', 'base', 'none'" in capsys.readouterr().err


def test_a_missing_root_exits_2_naming_it_and_creates_nothing(tmp_path, capsys):
    missing = tmp_path / "no-such-run"
    assert main(["gallery", str(missing)]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "does not exist" in err and "pusa-batch run" in err
    assert not missing.exists()


def ids_of(page) -> list[str]:
    return [c.attrs["data-id"] for c in read_page(page).cards]
