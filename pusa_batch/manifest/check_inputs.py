"""The input files one manifest chunk names: paths resolved against the manifest's folder, and
each file probed once (a stat, then the media header) when files are checked.

`InputProbes` keeps its cache across chunks: a file named by many rows is probed once.
"""

from __future__ import annotations

import os
import stat
from typing import Any

import fsspec
import numpy as np

from pusa_batch import video as media
from pusa_batch.errors import InputMediaError
from pusa_batch.manifest.check_cells import Problems, present
from pusa_batch.manifest.schema import resolve_path
from pusa_batch.redaction import redact_text, redact_url, secrets_of, storage_fix

# Without check_files a video's length is unknown: plan as if it were long enough.
UNPROBED_VIDEO_FRAMES = 10**9


class InputProbes:
    """Resolves a chunk's input paths and probes each file once, keeping the results."""

    def __init__(self, base: str, *, check_files: bool, storage_options: dict) -> None:
        self.base = base
        self.check_files = check_files
        self.storage_options = storage_options
        self._probes: dict[tuple[str, str], tuple[Any, str | None]] = {}

    def resolve_paths(self, cols: dict[str, Any], found: Problems, n: int) -> tuple[list, dict]:
        paths: dict[str, list[str | None]] = {}
        for name in ("image", "video", "video_b"):
            raw = cols.get(name)
            paths[name] = [None] * n
            if raw is None:
                continue
            for i in np.flatnonzero(present(raw)):
                paths[name][i] = resolve_path(self.base, raw[i])
                self._check_file(int(i), name, paths[name][i], found)
        images: list[tuple[str, ...]] = [()] * n
        lists = cols.get("images") or [None] * n
        for i in range(n) if ("images" in cols or "image" in cols) else ():
            if lists[i] is not None:
                images[i] = tuple(resolve_path(self.base, p) for p in lists[i])
                for p in images[i]:
                    self._check_file(i, "images", p, found)
            elif paths["image"][i] is not None:
                images[i] = (paths["image"][i],)
        return images, paths

    def probe(self, column: str, path: str) -> tuple[Any, str | None]:
        key = ("video" if column.startswith("video") else "image", path)
        if key not in self._probes:
            if len(self._probes) > 100_000:
                self._probes.clear()
            self._probes[key] = self._probe_uncached(key[0], path)
        return self._probes[key]

    def _probe_uncached(self, kind: str, path: str) -> tuple[Any, str | None]:
        try:
            fs, fs_path = fsspec.core.url_to_fs(path, **self.storage_options)
            problem = file_problem(fs, fs_path, path)
            if problem:
                return None, problem
            probe = media.probe_video if kind == "video" else media.probe_image
            return probe(path, storage_options=self.storage_options or None), None
        except InputMediaError as e:
            return None, redact_text(f"cannot read the {kind}: {e}", secrets_of(path, {}))
        except (OSError, ValueError) as e:
            return None, redact_text(f"cannot open {path}: {e}", secrets_of(path, {}))
        except Exception as e:  # a storage client's own errors (botocore's), never a traceback
            return None, f"cannot open {redact_url(path)}: {storage_fix(e, secrets_of(path, {}))}"

    def _check_file(self, i: int, column: str, path: str, found: Problems) -> None:
        if self.check_files:
            _, error = self.probe(column, path)
            if error:
                found.add(i, column, error)

    def video_frames(self, path: str | None) -> int | None:
        """The video's frame count from its header; None for no video."""
        if path is None:
            return None
        if not self.check_files:
            return UNPROBED_VIDEO_FRAMES
        info, _ = self.probe("video", path)
        return UNPROBED_VIDEO_FRAMES if info is None else int(info.frames)


def file_problem(fs: Any, fs_path: str, path: str) -> str | None:
    """Why an input file cannot be probed (missing, not a regular file, empty), else None: a
    FIFO or a device would block or never end, and an empty file has nothing to read. One
    stat (local) or one info call (remote) per file."""
    try:
        if getattr(fs, "local_file", False):
            found = os.stat(fs_path)
            regular, size = stat.S_ISREG(found.st_mode), found.st_size
        else:
            info = fs.info(fs_path)
            regular, size = info.get("type", "file") == "file", info.get("size")
    except FileNotFoundError:
        return f"input file not found: {path}"
    if not regular:
        return (
            f"{path} is not a regular file (a folder, FIFO or device); give an image or video file."
        )
    if size == 0:
        return f"{path} is an empty file (0 bytes); give a whole image or video."
    return None
