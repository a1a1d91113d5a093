"""The HTML gallery as written: what each card shows, how cards group and filter, the summary,
the files beside the page, and what the page refuses to do (run user text, load eagerly)."""

from __future__ import annotations

import io
import re
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np
import pytest
from gallery_support import Page, ids, media, read_page, sweep_root
from PIL import Image
from test_export_support import (
    DONE_IDS,
    SCRIPT_PROMPT,
    build_root,
    commit_item,
    item_dict,
    record_failure,
)

from pusa_batch.errors import ExportError
from pusa_batch.outputs.gallery import POSTER_PX, write_gallery
from pusa_batch.store.store import Store


@pytest.fixture(scope="module")
def gallery(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gallery")
    store = build_root(folder)
    summary = write_gallery(store)
    page = folder / "out" / "gallery.html"
    return summary, page, read_page(page)


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    folder = tmp_path_factory.mktemp("swept")
    summary = write_gallery(sweep_root(folder))
    return summary, read_page(folder / "out" / "gallery.html")


def done_cards(page: Page):
    return [c for c in page.cards if c.attrs["data-status"] == "done"]


# --------------------------------------------------------------------------- cards


def test_page_shows_every_done_and_failed_item_once(gallery):
    summary, _, page = gallery
    by_status = {
        s: sorted(c.attrs["data-id"] for c in page.cards if c.attrs["data-status"] == s)
        for s in ("done", "failed")
    }
    assert by_status == {"done": sorted(DONE_IDS), "failed": ["broken"]}
    assert (summary.done, summary.failed, summary.posters) == (len(DONE_IDS), 1, len(DONE_IDS))


def test_a_card_is_titled_by_its_prompt_with_its_id_below(gallery):
    _, _, page = gallery
    card = page.card("slash")
    assert card.one("h3", "title").text == "day/night cycle"
    assert card.one("p", "subtitle").one("code").text == "slash"


def test_prompts_are_escaped_not_run(gallery):
    _, path, page = gallery
    text = path.read_text()
    assert len(page.root.all("script")) == 1  # the page's own script only
    assert "<script>alert" not in text and "<b>bold</b>" not in text
    assert page.card("clip.v2").one("h3", "title").text == SCRIPT_PROMPT
    assert page.card("broken").one("h3", "title").text == "a <b>bold</b> failure"


def test_a_prompt_that_closes_the_script_leaves_the_script_whole(tmp_path):
    store = Store(str(tmp_path / "out"))
    commit_item(store, item_dict("x", "</script><script>alert(1)</script>", 1))
    write_gallery(store)
    page = read_page(tmp_path / "out" / "gallery.html")
    (script,) = page.root.all("script")
    assert script.text.rstrip().endswith("})();")  # the page's script, to its last line
    assert page.card("x").one("h3", "title").text == "</script><script>alert(1)</script>"


def test_a_card_shows_seed_pipeline_and_time_of_its_item(gallery):
    _, _, page = gallery
    facts = page.card("cat-c").one("dl").text
    assert "seed3" in facts and "pipelinetiny abc123" in facts
    assert "0.6 s (sample 0.5 s)" in facts  # sample 0.5 + decode 0.1, as the marker records


def test_failed_items_show_their_error_and_no_video(gallery):
    _, _, page = gallery
    card = page.card("broken")
    assert "data-src" not in media(card).attrs
    assert "InputMediaError" in card.text
    assert "missing.png: file not found" in card.text


def test_local_conditioning_images_get_thumbnails(gallery):
    _, path, page = gallery
    card = page.card("clip.v2")
    thumb = path.parent / unquote(card.one("img").attrs["data-src"])
    assert thumb.parent.name == "inputs" and Image.open(thumb).format == "PNG"
    assert "frames [0] × 0.2" in card.text  # the conditioning that was applied


def test_an_i2v_input_image_is_shown_once(gallery):
    _, _, page = gallery
    assert len(page.card("clip.v2").all("img")) == 1


def test_a_record_from_before_0_2_naming_its_image_twice_shows_it_once(tmp_path):
    image = tmp_path / "pic.png"
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(image)
    store = Store(str(tmp_path / "out"))
    item = item_dict("old", "an old record", 1, task="i2v", image=str(image))
    commit_item(store, {**item, "image": str(image)})  # both fields, as 0.1 wrote them
    write_gallery(store)
    card = read_page(tmp_path / "out" / "gallery.html").card("old")
    assert len(card.all("img")) == 1


# --------------------------------------------------------------------------- lazy media


def test_the_page_holds_no_video_element_and_loads_no_media_by_itself(gallery):
    _, path, _ = gallery
    text = path.read_text()
    assert "<video" not in text  # the script creates each one when its card is in view
    assert not re.search(r"\ssrc=", text)  # every media URL waits in data-src / data-poster


def test_done_items_play_their_video_relative_to_the_root(gallery):
    _, path, page = gallery
    for card in done_cards(page):
        src = unquote(media(card).attrs["data-src"])
        assert src == f"videos/{card.attrs['data-id']}.mp4"
        assert (path.parent / src).is_file()


def test_posters_are_small_pngs_of_the_first_frame_beside_the_page(gallery):
    _, path, page = gallery
    for card in done_cards(page):
        poster = path.parent / unquote(media(card).attrs["data-poster"])
        assert poster.parent == path.parent / "gallery_files" / "posters"
        image = Image.open(io.BytesIO(poster.read_bytes()))
        assert image.format == "PNG" and max(image.size) <= POSTER_PX
        assert np.asarray(image).std() > 0  # not a blank frame


def test_a_video_that_cannot_be_decoded_gets_no_poster_but_its_card(tmp_path):
    store = Store(str(tmp_path / "out"))
    commit_item(store, item_dict("garbled", "a fox", 1), video=b"not an mp4 at all")
    summary = write_gallery(store)
    card = read_page(tmp_path / "out" / "gallery.html").card("garbled")
    assert media(card).attrs["data-poster"] == "" and summary.posters == 0


def test_the_page_needs_no_network(gallery):
    _, path, _ = gallery
    assert "://" not in path.read_text()  # no CDN, font, script or image from elsewhere


# --------------------------------------------------------------------------- groups


def test_cards_of_one_prompt_sit_together_in_seed_order(gallery):
    summary, _, page = gallery
    group = next(g for g in page.groups if g.one("h2").text == "a red cat")
    assert ids(group.all("article")) == ["cat-a", "cat-b", "cat-c"]  # seeds 1, 1, 3
    assert [v.text for v in group.all("span", "variant")] == ["seed 1", "seed 1", "seed 3"]
    assert summary.grouping == "prompt"


def test_a_failure_naming_no_pipeline_differs_from_its_group_by_seed_only(tmp_path):
    store = Store(str(tmp_path / "out"))
    commit_item(store, item_dict("fox-1", "a fox", 1))
    record_failure(store, item_dict("fox-2", "a fox", 2, row=2), "PipelineError", "out of memory")
    write_gallery(store)
    (group,) = read_page(tmp_path / "out" / "gallery.html").groups
    assert [v.text for v in group.all("span", "variant")] == ["seed 1", "seed 2"]


def test_groups_follow_the_manifest_order(gallery):
    _, _, page = gallery
    titles = [g.one("h2").text for g in page.groups]
    assert titles == ["a red cat", "day/night cycle", SCRIPT_PROMPT, "a <b>bold</b> failure"]


def test_a_sweep_groups_by_base_row_with_its_grid_values_side_by_side(swept):
    summary, page = swept
    assert summary.grouping == "base"
    fox = next(g for g in page.groups if g.attrs["data-group"] == "sweep:fox")
    assert fox.one("h2").text == "a fox"
    assert [v.text for v in fox.all("span", "variant")] == [
        "steps 10 · guidance_scale 3.0",
        "steps 10 · guidance_scale 5.0",
        "steps 20 · guidance_scale 3.0",
        "steps 20 · guidance_scale 5.0",
    ]


def test_group_by_prompt_puts_a_sweep_of_one_prompt_in_one_group(tmp_path):
    write_gallery(sweep_root(tmp_path), group_by="prompt")
    page = read_page(tmp_path / "out" / "gallery.html")
    assert [(g.one("h2").text, len(g.all("article"))) for g in page.groups] == [
        ("a fox", 4),
        ("an owl", 4),
    ]


def test_group_by_none_shows_one_flat_grid_in_manifest_order(tmp_path):
    store = build_root(tmp_path)
    write_gallery(store, group_by="none")
    page = read_page(tmp_path / "out" / "gallery.html")
    (group,) = page.groups
    assert "flat" in group.classes() and group.get("h2") is None
    assert ids(group.all("article")) == ["cat-c", "cat-b", "cat-a", "slash", "clip.v2", "broken"]


def test_auto_grouping_shows_a_flat_grid_when_no_prompt_repeats(tmp_path):
    store = Store(str(tmp_path / "out"))
    commit_item(store, item_dict("fox", "a fox", 1))
    commit_item(store, item_dict("owl", "an owl", 1, row=2))
    assert write_gallery(store).grouping == "none"


def test_an_unknown_grouping_is_refused_before_anything_is_written(tmp_path):
    store = Store(str(tmp_path / "out"))
    commit_item(store, item_dict("fox", "a fox", 1))
    with pytest.raises(ExportError, match="prompt, base, none"):
        write_gallery(store, group_by="colour")
    assert not (tmp_path / "out" / "gallery.html").exists()


# --------------------------------------------------------------------------- filters


def test_filters_offer_status_task_seed_and_pipeline_values(gallery):
    _, _, page = gallery
    assert page.facets() == {
        "status": ["done", "failed"],
        "task": ["i2v", "t2v"],
        "seed": ["1", "3", "5", "9", "11"],
        "pipeline": ["(not recorded)", "tiny abc123"],
    }
    assert page.root.one("input").attrs["data-facet"] == "q"  # and a text search


def test_cards_carry_the_values_their_filters_match(gallery):
    _, _, page = gallery
    card = page.card("clip.v2")
    attrs = {k: card.attrs[k] for k in ("data-status", "data-task", "data-seed", "data-pipeline")}
    assert attrs == {
        "data-status": "done",
        "data-task": "i2v",
        "data-seed": "9",
        "data-pipeline": "tiny abc123",
    }


def test_each_swept_column_gets_a_filter(swept):
    _, page = swept
    facets = page.facets()
    assert facets["steps"] == ["10", "20"] and facets["guidance_scale"] == ["3.0", "5.0"]
    card = page.card("owl--steps_20--guidance_scale_3.0")
    assert (card.attrs["data-sweep-steps"], card.attrs["data-sweep-guidance_scale"]) == (
        "20",
        "3.0",
    )


# --------------------------------------------------------------------------- summary


def test_the_summary_counts_items_and_their_throughput(gallery):
    _, _, page = gallery
    stats = {d.one("dt").text: d.one("dd").text for d in page.root.one("dl", "stats").all("div")}
    assert (stats["done"], stats["failed"], stats["damaged"]) == ("5", "1", "1")
    assert stats["wall time"].endswith("s") and float(stats["items / min"]) > 0
    assert stats["sampling time"] == "2.5 s"  # 5 items x 0.5 s


def test_the_summary_plots_each_stage_of_every_item_inline(gallery):
    _, _, page = gallery
    svg = page.root.one("svg", "timings")
    assert [p.one("title").text for p in svg.all("path")] == ["sample", "decode"]
    assert len(re.findall("M", svg.all("path")[0].attrs["d"])) == len(DONE_IDS)  # one bar each
    rows = [r.all("td")[0].text for r in page.root.one("table", "stages").all("tr")[1:]]
    assert rows == ["sample", "decode"]


# --------------------------------------------------------------------------- files


def test_a_missing_root_is_an_error_and_is_not_created(tmp_path):
    with pytest.raises(ExportError, match=r"does not exist.*pusa-batch run") as error:
        write_gallery(Store(str(tmp_path / "typo")))
    assert str(tmp_path / "typo") in str(error.value)
    assert not (tmp_path / "typo").exists()


def test_page_outside_the_root_links_videos_by_absolute_url(tmp_path):
    store = Store(str(tmp_path / "out"))
    commit_item(store, item_dict("one", "a fox", 1))
    write_gallery(store, str(tmp_path / "site" / "page.html"))
    card = read_page(tmp_path / "site" / "page.html").card("one")
    src = urlsplit(media(card).attrs["data-src"])
    assert src.scheme == "file" and Path(unquote(src.path)) == tmp_path / "out/videos/one.mp4"
    assert (tmp_path / "site" / "page_files" / "posters" / "one.png").is_file()


def test_video_base_serves_videos_from_elsewhere(tmp_path):
    store = Store(str(tmp_path / "out"))
    commit_item(store, item_dict("odd #1 %", "a fox", 1))
    write_gallery(store, str(tmp_path / "page.html"), video_base="https://cdn.example/run7/")
    card = read_page(tmp_path / "page.html").card("odd #1 %")
    assert media(card).attrs["data-src"] == "https://cdn.example/run7/videos/odd%20%231%20%25.mp4"


def test_a_named_page_inside_the_root_links_videos_relatively(tmp_path):
    store = Store(str(tmp_path / "out"))
    commit_item(store, item_dict("one", "a fox", 1))
    summary = write_gallery(store, tmp_path / "out" / "review.html")
    card = read_page(tmp_path / "out" / "review.html").card("one")
    assert media(card).attrs["data-src"] == "videos/one.mp4"
    assert summary.page.endswith("review.html")
    assert (tmp_path / "out" / "review_files" / "posters" / "one.png").is_file()
