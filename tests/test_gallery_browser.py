"""The gallery in headless Chromium, served over HTTP from the output root: media load, filters
work, the page renders. Skipped only when no chromium is installed."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_export_support import DONE_IDS, build_root, commit_item, item_dict

from pusa_batch.outputs.gallery import write_gallery

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")
ODD_ID = "odd #1 %"  # needs URL quoting in every src


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Iterator[str]:
    """The output root with its gallery, served by `python -m http.server` on 127.0.0.1."""
    folder = tmp_path_factory.mktemp("site")
    store = build_root(folder)
    commit_item(store, item_dict(ODD_ID, "an oddly named item", 4, row=8))
    write_gallery(store)
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        cwd=folder / "out",
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(f"{base}/gallery.html", timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        yield base
    finally:
        server.terminate()
        server.wait(timeout=10)


def chromium(tmp_path: Path, *args: str) -> str:
    command = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        *args,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    return done.stdout


def dump_dom(tmp_path: Path, url: str) -> str:
    return chromium(tmp_path, "--virtual-time-budget=15000", "--dump-dom", url)


def body_attrs(dom: str) -> dict[str, str]:
    body = re.search(r"<body([^>]*)>", dom)
    assert body, "chromium returned no page"
    return dict(re.findall(r'([\w-]+)="([^"]*)"', body.group(1)))


def test_every_video_poster_and_input_image_loads(site, tmp_path):
    attrs = body_attrs(dump_dom(tmp_path, f"{site}/gallery.html"))
    n_videos = len(DONE_IDS) + 1
    assert attrs["data-media-done"] == "1"
    assert attrs["data-media-errors"] == "0", attrs["data-media-error-codes"]
    assert int(attrs["data-media-loaded"]) == int(attrs["data-media-total"])
    assert int(attrs["data-media-total"]) == 2 * n_videos + 1  # videos, posters, one input


def test_filters_in_the_url_fragment_hide_other_cards(site, tmp_path):
    dom = dump_dom(tmp_path, f"{site}/gallery.html#status=failed")
    visible = re.findall(r'<article class="card \w+" data-id="([^"]*)"[^>]*>', dom)
    hidden = re.findall(r'<article class="card \w+" data-id="([^"]*)"[^>]*hidden[^>]*>', dom)
    assert sorted(set(visible) - set(hidden)) == ["broken"]


def test_screenshot_shows_the_rendered_gallery(site, tmp_path):
    shot = tmp_path / "gallery.png"
    chromium(
        tmp_path,
        "--virtual-time-budget=15000",
        "--hide-scrollbars",
        f"--screenshot={shot}",
        "--window-size=1200,900",
        f"{site}/gallery.html",
    )
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape == (900, 1200, 3)
    colours = np.unique(pixels.reshape(-1, 3), axis=0)
    assert len(colours) > 200  # posters and text, not a blank or single-colour page
