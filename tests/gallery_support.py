"""Helpers for the gallery tests (no tests here): the page read back as a small tree, a root
made by a real sweep, and a 2,000-item page with real media files."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

from test_export_support import commit_item, frames, item_dict

from pusa_batch.manifest.builders_sweep import sweep
from pusa_batch.outputs.gallery_cards import Card
from pusa_batch.outputs.gallery_html import render_page
from pusa_batch.store.store import Store
from pusa_batch.video import encode_mp4, poster_frame_png

VOID = {"img", "br", "input", "meta", "link", "hr", "source", "rect", "line"}


@dataclass
class Node:
    tag: str
    attrs: dict[str, str | None]
    children: list[Node] = field(default_factory=list)
    parts: list[str] = field(default_factory=list)  # text directly inside

    @property
    def text(self) -> str:
        return "".join(self.parts) + "".join(c.text for c in self.children)

    def classes(self) -> set[str]:
        return set((self.attrs.get("class") or "").split())

    def walk(self) -> Iterator[Node]:
        yield self
        for child in self.children:
            yield from child.walk()

    def all(self, tag: str | None = None, cls: str | None = None) -> list[Node]:
        return [
            n
            for n in self.walk()
            if (tag is None or n.tag == tag) and (cls is None or cls in n.classes())
        ]

    def one(self, tag: str | None = None, cls: str | None = None) -> Node:
        found = self.all(tag, cls)
        assert len(found) == 1, f"expected one {tag}.{cls}, found {len(found)}"
        return found[0]

    def get(self, tag: str | None = None, cls: str | None = None) -> Node | None:
        return next(iter(self.all(tag, cls)), None)


class Page(HTMLParser):
    """The gallery page as a tree, with its cards, groups and filters at hand."""

    def __init__(self, text: str):
        super().__init__()
        self.root = Node("#document", {})
        self._stack = [self.root]
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        node = Node(tag, dict(attrs))
        self._stack[-1].children.append(node)
        if tag not in VOID:
            self._stack.append(node)

    def handle_startendtag(self, tag, attrs):
        self._stack[-1].children.append(Node(tag, dict(attrs)))

    def handle_endtag(self, tag):
        for depth in range(len(self._stack) - 1, 0, -1):
            if self._stack[depth].tag == tag:
                del self._stack[depth:]
                return

    def handle_data(self, data):
        self._stack[-1].parts.append(data)

    @property
    def cards(self) -> list[Node]:
        return self.root.all("article", "card")

    def card(self, item_id: str) -> Node:
        return next(c for c in self.cards if c.attrs["data-id"] == item_id)

    @property
    def groups(self) -> list[Node]:
        return self.root.all("section", "group")

    def facets(self) -> dict[str, list[str]]:
        """Each filter's name and the values it offers (the "all" choice left out)."""
        return {
            s.attrs["data-facet"]: [o.attrs["value"] for o in s.all("option") if o.attrs["value"]]
            for s in self.root.all("select")
        }


def read_page(path: Path) -> Page:
    return Page(path.read_text())


def ids(nodes: list[Node]) -> list[str]:
    return [n.attrs["data-id"] for n in nodes]


def media(card: Node) -> Node:
    return card.one("div", "media")


def sweep_root(folder: Path) -> Store:
    """A root of the rows `pusa-batch manifest sweep` makes from two base rows (fox, owl) over
    steps=10,20 x guidance_scale=3.0,5.0, each committed as the worker does."""
    folder.mkdir(parents=True, exist_ok=True)
    base = folder / "base.csv"
    base.write_text("id,task,prompt,seed\nfox,t2v,a fox,1\nowl,t2v,an owl,2\n")
    sweep(str(base), str(folder / "sweep.jsonl"), {"steps": [10, 20], "guidance_scale": [3.0, 5.0]})
    store = Store(str(folder / "out"))
    video = encode_mp4(frames(1), 8)
    lines = (folder / "sweep.jsonl").read_text().splitlines()
    for row_number, row in enumerate(map(json.loads, lines), start=1):
        columns = {k: row[k] for k in ("steps", "guidance_scale")}
        item = item_dict(row["id"], row["prompt"], row["seed"], row=row_number, **columns)
        commit_item(store, item, video)
    return store


BIG_PROMPTS = 500  # x 4 seeds
BIG_TIMINGS = {"queue": 2.0, "prepare": 0.2, "sample": 4.0, "decode": 0.3, "encode": 0.2}


def big_item_id(n: int) -> str:
    return f"p{n // 4:03d}-s{n % 4}"


def big_page(folder: Path, n: int = 4 * BIG_PROMPTS) -> Path:
    """A gallery page of `n` done items (4 seeds per prompt), each with its own video and poster
    file (hard links to one tiny mp4 and its first frame), laid out as in an output root."""
    (folder / "videos").mkdir(parents=True)
    (folder / "posters").mkdir()
    mp4 = folder / "clip.mp4"
    mp4.write_bytes(encode_mp4(frames(3), 8))
    poster = folder / "clip.png"
    poster.write_bytes(poster_frame_png(mp4.read_bytes()))
    cards = []
    for k in range(n):
        item_id = big_item_id(k)
        os.link(mp4, folder / "videos" / f"{item_id}.mp4")
        os.link(poster, folder / "posters" / f"{item_id}.png")
        item = item_dict(item_id, f"prompt number {k // 4}", k % 4, row=k + 1)
        stamp = f"2025-01-01T{k // 3600:02d}:{k // 60 % 60:02d}:{k % 60:02d}+00:00"
        cards.append(
            Card(
                item_id,
                "done",
                item,
                video_src=f"videos/{item_id}.mp4",
                poster_src=f"posters/{item_id}.png",
                pipeline="tiny abc123",
                timings=BIG_TIMINGS,
                committed_at=stamp,
            )
        )
    page = folder / "gallery.html"
    page.write_text(render_page(cards, "a big run"))
    return page
