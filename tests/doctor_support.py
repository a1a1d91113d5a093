"""What the doctor tests share: sparse full-size checkpoints and reading a report."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

from safetensors.torch import load_file, save_file


def write_sparse_safetensors(file: Path, shapes: dict[str, tuple[int, ...]]) -> None:
    """A bf16 safetensors file whose header is real and whose data is a hole (no disk used)."""
    header, offset = {}, 0
    for key, shape in shapes.items():
        size = 2 * math.prod(shape)
        header[key] = {
            "dtype": "BF16",
            "shape": list(shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with file.open("wb") as fh:
        fh.write(struct.pack("<Q", len(raw)) + raw)
        fh.truncate(8 + len(raw) + offset)


def statuses(report) -> dict[str, str]:
    return {c.name: c.status for c in report.checks}


def rewrite(file: Path, change) -> None:
    """Rewrite a safetensors file with `change(state_dict)` applied."""
    sd = load_file(file)
    change(sd)
    save_file(sd, file)
