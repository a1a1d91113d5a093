"""`Item`: one resolved manifest row, the unit of work from the plan to a worker and its record."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from pusa_batch.errors import ManifestError

# How an input picture of another aspect ratio is framed (`pusa_batch.video` does it): scale to
# cover and centre-crop, letterbox on black, plain resize, or take the output size from the first
# input (rounded down to the spatial multiple) and resize plainly.
FITS = ("cover", "contain", "stretch", "native")


@dataclass(frozen=True)
class Item:
    """One resolved manifest row: paths absolute (or URLs), every default filled in."""

    id: str
    row: int
    task: str
    prompt: str
    negative_prompt: str
    images: tuple[str, ...]  # every input image, in order (the `image` column is one of them)
    video: str | None
    video_b: str | None
    cond_frames: tuple[int, ...] | None
    noise_multipliers: tuple[float, ...] | None
    num_frames: int
    height: int
    width: int
    fps: int
    seed: int
    steps: int
    guidance_scale: float
    shift: float
    # The framing of the inputs (`FITS`); None for an item with no input media. With "native"
    # height and width are already the first input's size, rounded down.
    fit: str | None = None
    # The user's own manifest columns (name, value) in manifest order: text, whole number,
    # number, true/false or None. Carried into the marker and the index; never into the
    # fingerprint, so relabelling a manifest regenerates nothing.
    extra: tuple[tuple[str, Any], ...] = ()

    def cost(self) -> int:
        """Relative work (frames x pixels x steps): schedule the largest first."""
        return self.num_frames * self.height * self.width * self.steps

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (tuples become lists)."""
        out = asdict(self)
        for name in ("images", "cond_frames", "noise_multipliers"):
            if out[name] is not None:
                out[name] = list(out[name])
        if self.extra:
            out["extra"] = dict(self.extra)
        else:  # a record without extra columns reads as it did before they were carried
            del out["extra"]
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Item:
        """An Item from `to_dict`'s form; records written before 0.2 also carry `image`, which
        is always `images[0]` there and is dropped; records written before `fit` have none
        (they were framed "cover"); records without `extra` had no extra columns."""
        data = dict(data)
        data["extra"] = tuple((str(k), v) for k, v in (data.get("extra") or {}).items())
        if "fit" not in data:
            media = data.get("images") or data.get("image") or data.get("video")
            data["fit"] = "cover" if media else None
        legacy_image = data.pop("image", None)
        if legacy_image and not data.get("images"):
            data["images"] = [legacy_image]
        names = [f.name for f in fields(cls)]
        missing = [n for n in names if n not in data]
        unknown = [k for k in data if k not in names]
        if missing or unknown:
            raise ManifestError(
                f"Cannot rebuild an Item: missing keys {missing}, unknown keys {unknown}. "
                "Was it written by a different pusa-batch version?"
            )
        values = dict(data)
        values["images"] = tuple(values["images"] or ())
        for name, cast in (("cond_frames", int), ("noise_multipliers", float)):
            if values[name] is not None:
                values[name] = tuple(cast(v) for v in values[name])
        for name in ("row", "num_frames", "height", "width", "fps", "seed", "steps"):
            values[name] = int(values[name])
        for name in ("guidance_scale", "shift"):
            values[name] = float(values[name])
        return cls(**values)
