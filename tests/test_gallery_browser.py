"""The gallery in headless Chromium, served over HTTP by a server that logs every request: media
in view load, filters hide cards, a 2,000-item page stays light until scrolled, the page renders.
Skipped only when no chromium is installed."""

from __future__ import annotations

import io
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from browser_support import Page, open_page
from gallery_support import BIG_PROMPTS, big_item_id, big_page, sweep_root
from PIL import Image
from test_export_support import DONE_IDS, build_root, commit_item, item_dict

from pusa_batch.outputs.gallery import write_gallery

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")
ODD_ID = "odd #1 %"  # needs URL quoting in every src
SERVER = Path(__file__).with_name("gallery_server.py")
MEDIA = re.compile(r"^/(?:.*_files/)?(?:videos|posters|inputs)/")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class Site:
    url: str  # the gallery page
    log: Path  # "STATUS PATH" per request

    def requests(self) -> list[tuple[int, str]]:
        lines = self.log.read_text().splitlines() if self.log.exists() else []
        return [(int(code), path) for code, path in (line.split(" ", 1) for line in lines)]

    def media_requests(self) -> list[tuple[int, str]]:
        return [(code, path) for code, path in self.requests() if MEDIA.match(path)]

    def forget_requests(self) -> None:
        self.log.write_text("")


@contextmanager
def served(folder: Path, page: str = "gallery.html") -> Iterator[Site]:
    """`folder` over HTTP on 127.0.0.1 (gallery_server.py), every request logged."""
    port, log = free_port(), folder.parent / f"{folder.name}-requests.log"
    server = subprocess.Popen([sys.executable, str(SERVER), str(port), str(folder), str(log)])
    site = Site(f"http://127.0.0.1:{port}/{page}", log)
    try:
        for _ in range(200):
            try:
                urllib.request.urlopen(site.url, timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        site.forget_requests()
        yield site
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Iterator[Site]:
    """The output root of `build_root` (plus an oddly named item) with its gallery."""
    folder = tmp_path_factory.mktemp("site")
    store = build_root(folder)
    commit_item(store, item_dict(ODD_ID, "an oddly named item", 4, row=8))
    write_gallery(store)
    with served(folder / "out") as running:
        yield running


@pytest.fixture(scope="module")
def big(tmp_path_factory) -> Iterator[Site]:
    page = big_page(tmp_path_factory.mktemp("big") / "root")
    with served(page.parent) as running:
        yield running


@pytest.fixture(scope="module")
def swept(tmp_path_factory) -> Iterator[Site]:
    folder = tmp_path_factory.mktemp("swept")
    write_gallery(sweep_root(folder))
    with served(folder / "out") as running:
        yield running


MEDIA_SETTLED = "document.body.dataset.mediaDone === '1'"


@contextmanager
def settled_page(site: Site, tmp_path: Path, url: str, size=(1200, 900)) -> Iterator[Page]:
    """`url` in a fresh Chromium once every medium it mounted has loaded or failed (the page's
    data-media-done), waited for in real time; the site's request log then holds that load only."""
    site.forget_requests()
    with open_page(CHROMIUM, tmp_path / "chromium-profile", url, size) as page:
        page.wait_for(MEDIA_SETTLED, timeout_s=60)
        yield page


def settled_dom(site: Site, tmp_path: Path, url: str, size=(1200, 900)) -> str:
    with settled_page(site, tmp_path, url, size) as page:
        return page.dom()


def body_attrs(dom: str) -> dict[str, str]:
    body = re.search(r"<body([^>]*)>", dom)
    assert body, "chromium returned no page"
    return dict(re.findall(r'([\w-]+)="([^"]*)"', body.group(1)))


def visible_ids(dom: str) -> list[str]:
    cards = re.findall(r'<article class="card \w+" data-id="([^"]*)"([^>]*)>', dom)
    return sorted(card_id for card_id, rest in cards if " hidden" not in rest)


# --------------------------------------------------------------------------- a small root


def test_every_video_poster_and_input_image_in_view_loads(site, tmp_path):
    dom = settled_dom(site, tmp_path, site.url, size=(1200, 4000))  # every card in view
    attrs = body_attrs(dom)
    n_videos = len(DONE_IDS) + 1
    assert attrs["data-media-done"] == "1", attrs
    assert attrs["data-media-errors"] == "0", attrs["data-media-error-codes"]
    assert int(attrs["data-media-mounted"]) == n_videos
    assert int(attrs["data-media-loaded"]) == int(attrs["data-media-total"]) == n_videos + 1
    posters = [(code, path) for code, path in site.media_requests() if "/posters/" in path]
    assert len(posters) == n_videos and {code for code, _ in posters} == {200}


@pytest.mark.parametrize(
    ("fragment", "expected"),
    [
        ("status=failed", ["broken"]),
        ("seed=1", ["cat-a", "cat-b"]),
        ("task=i2v&status=done", ["clip.v2"]),
        ("q=NIGHT", ["slash"]),  # text search: any case, prompt or id
        ("q=odd%20%231", [ODD_ID]),
    ],
)
def test_filters_in_the_url_fragment_hide_other_cards(site, tmp_path, fragment, expected):
    dom = settled_dom(site, tmp_path, f"{site.url}#{fragment}")
    assert visible_ids(dom) == expected
    assert body_attrs(dom)["data-shown"] == str(len(expected))


def test_a_group_whose_cards_are_all_filtered_out_is_hidden(site, tmp_path):
    dom = settled_dom(site, tmp_path, f"{site.url}#seed=3")
    sections = re.findall(r'<section class="group"([^>]*)>', dom)
    shown = [s for s in sections if " hidden" not in s]
    assert len(shown) == 1 and 'data-group="a red cat"' in shown[0]


def test_screenshot_shows_the_rendered_gallery(site, tmp_path):
    with settled_page(site, tmp_path, site.url, size=(1200, 900)) as page:
        shot = page.screenshot_png()
    pixels = np.asarray(Image.open(io.BytesIO(shot)).convert("RGB"))
    assert pixels.shape == (900, 1200, 3)
    colours = np.unique(pixels.reshape(-1, 3), axis=0)
    assert len(colours) > 200  # posters, plot and text, not a blank or single-colour page


# --------------------------------------------------------------------------- a sweep


def test_a_swept_column_filters_the_grid(swept, tmp_path):
    dom = settled_dom(swept, tmp_path, f"{swept.url}#steps=20&guidance_scale=5.0")
    assert visible_ids(dom) == [
        "fox--steps_20--guidance_scale_5.0",
        "owl--steps_20--guidance_scale_5.0",
    ]


# --------------------------------------------------------------------------- 2,000 items


def test_a_2000_item_page_asks_for_fewer_than_50_media_before_scrolling(big, tmp_path):
    attrs = body_attrs(settled_dom(big, tmp_path, big.url))
    asked = big.media_requests()
    assert attrs["data-shown"] == str(4 * BIG_PROMPTS)
    assert 0 < len(asked) < 50, asked
    assert 0 < int(attrs["data-media-mounted"]) < 25  # <video> elements in the page
    assert attrs["data-media-errors"] == "0", attrs["data-media-error-codes"]


def test_a_filter_loads_only_the_cards_it_brings_into_view(big, tmp_path):
    wanted = [big_item_id(4 * 321 + seed) for seed in range(4)]  # prompt 321, deep in the page
    dom = settled_dom(big, tmp_path, f"{big.url}#q=p321-")
    assert visible_ids(dom) == wanted
    videos = sorted(path for _, path in big.media_requests() if path.startswith("/videos/"))
    assert videos == [f"/videos/{item_id}.mp4" for item_id in wanted]
