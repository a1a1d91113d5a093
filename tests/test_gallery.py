"""The HTML gallery: what the page shows for done and failed items, and the files beside it."""

from __future__ import annotations

import io
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np
import pytest
from PIL import Image
from test_export_support import DONE_IDS, SCRIPT_PROMPT, build_root, commit_item, item_dict

from pusa_batch.outputs.gallery import POSTER_PX, write_gallery
from pusa_batch.store.store import Store


class Cards(HTMLParser):
    """Each <article> card: its attributes, the tags inside it and its text."""

    def __init__(self, text: str):
        super().__init__()
        self.cards: list[dict] = []
        self.buttons: list[dict] = []
        self.scripts = 0
        self._depth = 0
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "script":
            self.scripts += 1
        if tag == "button":
            self.buttons.append(attrs)
        if tag == "article":
            self.cards.append({**attrs, "tags": [], "text": ""})
            self._depth = 1
        elif self._depth:
            self.cards[-1]["tags"].append((tag, attrs))
            self._depth += tag not in {"img", "br"}

    def handle_endtag(self, tag):
        if self._depth and tag not in {"img", "br"}:
            self._depth -= 1

    def handle_data(self, data):
        if self._depth:
            self.cards[-1]["text"] += data


def card_id(card: dict) -> str:
    return card["data-id"]


def first(card: dict, tag: str) -> dict | None:
    return next((a for t, a in card["tags"] if t == tag), None)


@pytest.fixture(scope="module")
def gallery(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gallery")
    store = build_root(folder)
    summary = write_gallery(store)
    page = folder / "out" / "gallery.html"
    return summary, page, Cards(page.read_text())


def test_page_shows_every_done_and_failed_item_once(gallery):
    summary, _, parsed = gallery
    by_status = {
        s: sorted(card_id(c) for c in parsed.cards if c["data-status"] == s)
        for s in ("done", "failed")
    }
    assert by_status == {"done": sorted(DONE_IDS), "failed": ["broken"]}
    assert (summary.done, summary.failed, summary.posters) == (len(DONE_IDS), 1, len(DONE_IDS))


def test_prompts_are_escaped_not_run(gallery):
    _, page, parsed = gallery
    text = page.read_text()
    assert parsed.scripts == 1  # the page's own script only
    assert "<script>alert" not in text and "<b>bold</b>" not in text
    assert SCRIPT_PROMPT in " ".join(c["text"] for c in parsed.cards)


def test_done_items_play_their_video_relative_to_the_root(gallery):
    _, page, parsed = gallery
    for card in (c for c in parsed.cards if c["data-status"] == "done"):
        video = first(card, "video")
        assert unquote(video["src"]) == f"videos/{card_id(card)}.mp4"
        assert (page.parent / unquote(video["src"])).is_file()


def test_posters_are_small_pngs_of_the_first_frame_beside_the_page(gallery):
    _, page, parsed = gallery
    for card in (c for c in parsed.cards if c["data-status"] == "done"):
        poster = page.parent / unquote(first(card, "video")["poster"])
        assert poster.parent == page.parent / "gallery_files" / "posters"
        image = Image.open(io.BytesIO(poster.read_bytes()))
        assert image.format == "PNG" and max(image.size) <= POSTER_PX
        assert np.asarray(image).std() > 0  # not a blank frame


def test_failed_items_show_their_error_and_no_video(gallery):
    _, _, parsed = gallery
    card = next(c for c in parsed.cards if c["data-status"] == "failed")
    assert first(card, "video") is None
    assert "InputMediaError" in card["text"]
    assert "missing.png: file not found" in card["text"]
    assert "a <b>bold</b> failure" in card["text"]


def test_local_conditioning_images_get_thumbnails(gallery):
    _, page, parsed = gallery
    card = next(c for c in parsed.cards if card_id(c) == "clip.v2")
    thumb = page.parent / unquote(first(card, "img")["src"])
    assert thumb.parent.name == "inputs" and Image.open(thumb).format == "PNG"
    assert "frames [0] × 0.2" in card["text"]  # the conditioning that was applied


def test_an_i2v_input_image_is_shown_once(gallery):
    _, _, parsed = gallery
    card = next(c for c in parsed.cards if card_id(c) == "clip.v2")
    inputs = [a for t, a in card["tags"] if t == "img" and a.get("alt") == "input"]
    assert len(inputs) == 1


def test_a_record_from_before_0_2_naming_its_image_twice_shows_it_once(tmp_path):
    image = tmp_path / "pic.png"
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(image)
    store = Store(str(tmp_path / "out"))
    item = item_dict("old", "an old record", 1, task="i2v", image=str(image))
    commit_item(store, {**item, "image": str(image)})  # both fields, as 0.1 wrote them
    write_gallery(store)
    card = Cards((tmp_path / "out" / "gallery.html").read_text()).cards[0]
    assert len([a for t, a in card["tags"] if t == "img" and a.get("alt") == "input"]) == 1


def test_filter_buttons_cover_every_task_and_status(gallery):
    _, _, parsed = gallery
    values = {(b["data-kind"], b["data-value"]) for b in parsed.buttons}
    assert values == {
        ("status", "all"),
        ("status", "done"),
        ("status", "failed"),
        ("task", "all"),
        ("task", "t2v"),
        ("task", "i2v"),
    }
    assert {c["data-task"] for c in parsed.cards} == {"t2v", "i2v"}


def test_page_outside_the_root_links_videos_by_absolute_url(tmp_path):
    store = Store(str(tmp_path / "out"))
    commit_item(store, item_dict("one", "a fox", 1))
    write_gallery(store, str(tmp_path / "site" / "page.html"))
    card = Cards((tmp_path / "site" / "page.html").read_text()).cards[0]
    src = urlsplit(first(card, "video")["src"])
    assert src.scheme == "file" and Path(unquote(src.path)) == tmp_path / "out/videos/one.mp4"
    assert (tmp_path / "site" / "page_files" / "posters" / "one.png").is_file()


def test_video_base_serves_videos_from_elsewhere(tmp_path):
    store = Store(str(tmp_path / "out"))
    commit_item(store, item_dict("odd #1 %", "a fox", 1))
    write_gallery(store, str(tmp_path / "page.html"), video_base="https://cdn.example/run7/")
    card = Cards((tmp_path / "page.html").read_text()).cards[0]
    assert first(card, "video")["src"] == "https://cdn.example/run7/videos/odd%20%231%20%25.mp4"


def test_a_named_page_inside_the_root_links_videos_relatively(tmp_path):
    store = Store(str(tmp_path / "out"))
    commit_item(store, item_dict("one", "a fox", 1))
    summary = write_gallery(store, tmp_path / "out" / "review.html")
    card = Cards((tmp_path / "out" / "review.html").read_text()).cards[0]
    assert first(card, "video")["src"] == "videos/one.mp4"
    assert summary.page.endswith("review.html")
    assert (tmp_path / "out" / "review_files" / "posters" / "one.png").is_file()
