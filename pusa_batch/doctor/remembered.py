"""The slow checks' passing verdicts, remembered per pipeline and set of weight files.

The key checks build every component on `meta`, which imports diffusers, transformers and
torch's meta kernels: seconds of CPU that `run` would spend again on every start, beside workers
loading the same files. A pipeline whose spec, weight files (path, size, mtime, inode of every
file) and library versions are all unchanged gets the verdicts it had before, with the memory
parts they measured (the device is compared afresh each time).

Only a record in which every slow check passed is kept: a warning or failure is always checked
again. `pusa-batch doctor` never reads a record (it checks afresh and writes one).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import asdict
from importlib import metadata
from pathlib import Path
from typing import Any

from pusa_batch.doctor.context import Check

RECORD_VERSION = 1
LIBRARIES = ("pusa-batch", "torch", "diffusers", "transformers", "safetensors")


def records_dir() -> Path:
    """`$PUSA_BATCH_CACHE/doctor`, else `~/.cache/pusa-batch/doctor`."""
    base = os.environ.get("PUSA_BATCH_CACHE")
    return (Path(base).expanduser() if base else Path.home() / ".cache" / "pusa-batch") / "doctor"


def record_key(spec: Any, paths: dict[str, Path]) -> str | None:
    """What the slow verdicts depend on, hashed; None when a file cannot be listed."""
    try:
        files = sorted(_stats(p) for p in {*paths.values(), *(lora.path for lora in spec.loras)})
    except OSError:
        return None
    described = {
        "record": RECORD_VERSION,
        "spec": repr(spec),
        "files": files,
        "versions": {name: _version(name) for name in LIBRARIES},
    }
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()


def recall(key: str | None) -> dict[str, Any] | None:
    """The record kept under `key`: {"checks": {name: Check}, "parts": {run: {part: bytes}}}."""
    if key is None:
        return None
    try:
        raw = json.loads((records_dir() / f"{key}.json").read_text())
        checks = {
            c["name"]: Check(c["name"], c["status"], c["detail"], tuple(c["lines"]))
            for c in raw["checks"]
        }
        parts = {run: {k: int(v) for k, v in got.items()} for run, got in raw["parts"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None  # absent, or not ours to trust: checked afresh
    return {"checks": checks, "parts": parts}


def remember(key: str | None, checks: list[Check], parts: dict[str, dict[str, int]]) -> None:
    """Keep the slow checks' verdicts when every one passed (best effort: a read-only home
    only means checking again next time)."""
    if key is None or any(check.status != "ok" for check in checks):
        return
    record = {"checks": [asdict(check) for check in checks], "parts": parts}
    folder = records_dir()
    with contextlib.suppress(OSError):
        folder.mkdir(parents=True, exist_ok=True)
        temp = folder / f".{key}.{os.getpid()}.tmp"
        temp.write_text(json.dumps(record))
        os.replace(temp, folder / f"{key}.json")


def _stats(path: Path) -> list[Any]:
    return [list(entry) for entry in _walk(Path(path))]


def _walk(path: Path) -> Iterator[tuple[str, int, int, int]]:
    if path.is_dir():
        for child in sorted(path.rglob("*")):
            if child.is_file():
                yield _stat(child)
    elif path.exists():
        yield _stat(path)
    else:
        yield (str(path), -1, -1, -1)


def _stat(path: Path) -> tuple[str, int, int, int]:
    st = path.stat()
    return (str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ino)


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return ""
