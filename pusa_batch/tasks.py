"""Task rules: which inputs a task takes and which latent frames they condition (pure Python).

Positions are pixel frames of the output clip (negative counts from the end); the temporal factor
r maps them to latent frames: latent 0 is frame 0, latent k >= 1 covers frames r*k-r+1 .. r*k.
The rules are data (``RULES``); manifests/TASKS.md documents them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from pusa_batch.cells import parse_float_list, parse_int_list
from pusa_batch.errors import TaskError

TASKS = ("t2v", "i2v", "start_end", "keyframes", "extend", "complete", "transition", "loop")


@dataclass(frozen=True)
class TaskRule:
    """One task. ``default_latents`` None means 'one per image, evenly spaced from 0 to -1'.

    ``align`` says where a conditioned frame's content comes from: "image" (image j at position j),
    "same" (the input video's frame p fills output frame p), "transition" (clip A's last frames
    at the start, clip B's first frames at the end), "first_frame" (one picture at every position).
    """

    name: str
    description: str
    inputs: tuple[str, ...]
    one_of: tuple[str, ...]
    n_images: tuple[int, int]
    default_latents: tuple[int, ...] | None
    default_multipliers: tuple[float, ...]
    align: str


def _rule(name, description, inputs=(), one_of=(), n_images=(0, 0), latents=(), mults=(), align=""):
    return TaskRule(name, description, inputs, one_of, n_images, latents, mults, align)


_MANY = 10**9
RULES: dict[str, TaskRule] = {
    r.name: r
    for r in (
        _rule("t2v", "text to video; nothing is conditioned"),
        _rule("i2v", "one image at a frame (default the first)", ("image",), (), (1, 1),
              (0,), (0.2,), "image"),
        _rule("start_end", "the first and the last frame from two images", ("images",), (),
              (2, 2), (0, -1), (0.2, 0.5), "image"),
        _rule("keyframes", "N images at N frames (default evenly spaced)", ("images",), (),
              (1, _MANY), None, (0.3,), "image"),
        _rule("extend", "continue a video from its first frames", ("video",), (), (0, 0),
              (0, 1, 2, 3), (0.0, 0.3, 0.4, 0.5), "same"),
        _rule("complete", "fill in between a video's opening and closing frames", ("video",), (),
              (0, 0), (0, -1), (0.3, 0.3), "same"),
        _rule("transition", "bridge the end of video A to the start of video_b",
              ("video", "video_b"), (), (0, 0), (0, 1, 2, -3, -2, -1),
              (0.1, 0.3, 0.3, 0.3, 0.3, 0.3), "transition"),
        _rule("loop", "the same picture (image, or a video's first frame) first and last", (),
              ("image", "video"), (1, 1), (0, -1), (0.0, 0.0), "first_frame"),
    )
}  # fmt: skip


# --- pixel <-> latent ----------------------------------------------------------------------------


def latent_index(pixel_frame: int, temporal_factor: int) -> int:
    return 0 if pixel_frame == 0 else -(-pixel_frame // temporal_factor)


def latent_frames(num_frames: int, temporal_factor: int) -> int:
    return (num_frames - 1) // temporal_factor + 1


def pixel_frames_of_latent(k: int, temporal_factor: int) -> tuple[int, ...]:
    if k == 0:
        return (0,)
    return tuple(range(temporal_factor * (k - 1) + 1, temporal_factor * k + 1))


def valid_num_frames(num_frames: int, temporal_factor: int) -> bool:
    return num_frames >= 1 and (num_frames - 1) % temporal_factor == 0


# --- the plan --------------------------------------------------------------------------------


@dataclass(frozen=True)
class CondSlot:
    """One conditioned latent frame and where its content comes from.

    ``source`` is "image" (``image_index``), "video" or "video_b" (``source_frames``, paired with
    ``pixel_frames``). ``encode_alone`` slots are encoded alone as a 1-frame video, as Pusa does
    for images; the others are sliced from the encoded conditioning video (see
    ``conditioning_video_layout``).
    """

    latent_index: int
    multiplier: float
    pixel_frames: tuple[int, ...]
    source: str
    image_index: int | None = None
    source_frames: tuple[int, ...] = ()
    encode_alone: bool = False

    def to_metadata(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


@dataclass(frozen=True)
class CondPlan:
    task: str
    num_frames: int
    temporal_factor: int
    slots: tuple[CondSlot, ...] = ()

    @property
    def latent_indices(self) -> tuple[int, ...]:
        return tuple(s.latent_index for s in self.slots)

    @property
    def multipliers(self) -> tuple[float, ...]:
        return tuple(s.multiplier for s in self.slots)

    @property
    def pixel_frames(self) -> tuple[tuple[int, ...], ...]:
        return tuple(s.pixel_frames for s in self.slots)

    def to_metadata(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "num_frames": self.num_frames,
            "latent_frames": latent_frames(self.num_frames, self.temporal_factor),
            "latent_indices": list(self.latent_indices),
            "pixel_frames": [list(p) for p in self.pixel_frames],
            "multipliers": list(self.multipliers),
            "slots": [s.to_metadata() for s in self.slots],
        }


_WORDS = {"image": "an image", "images": "images", "video": "a video", "video_b": "video_b"}


def _check_num_frames(num_frames: Any, r: Any) -> None:
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise TaskError("temporal_factor", f"must be a positive whole number, got {r!r}")
    if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1:
        raise TaskError("num_frames", f"must be a positive whole number, got {num_frames!r}")
    if not valid_num_frames(num_frames, r):
        lower = (num_frames - 1) // r * r + 1
        raise TaskError(
            "num_frames",
            f"{num_frames} frames cannot be encoded with temporal factor {r}: use {r}k+1 "
            f"frames, e.g. {lower} or {lower + r}",
        )


def _check_inputs(rule: TaskRule, n_images: int, video_frames, video_b_frames) -> str | None:
    """Raise unless exactly the inputs the task uses are given; return the chosen one_of input."""
    wanted = rule.inputs + rule.one_of
    image_col = next((c for c in wanted if c in ("image", "images")), "image")
    given = {image_col: n_images > 0, "video": video_frames is not None}
    given["video_b"] = video_b_frames is not None
    for name, present in given.items():
        if present and name not in wanted:
            users = [t for t in TASKS if name in RULES[t].inputs + RULES[t].one_of]
            raise TaskError(
                name,
                f"task '{rule.name}' does not use {_WORDS[name]}; remove it or use a task "
                f"that does ({', '.join(users)})",
            )
    for name in rule.inputs:
        if not given[name]:
            raise TaskError(name, f"task '{rule.name}' needs {_WORDS[name]}; none was given")
    chosen = [n for n in rule.one_of if given[n]]
    if rule.one_of and len(chosen) != 1:
        options = " or ".join(_WORDS[n] for n in rule.one_of)
        got = "both were given" if chosen else "neither was given"
        raise TaskError(rule.one_of[0], f"task '{rule.name}' needs {options}: {got}")
    lo, hi = rule.n_images
    if given[image_col] and not lo <= n_images <= hi:
        count = f"exactly {lo}" if lo == hi else f"at least {lo}"
        raise TaskError(
            image_col,
            f"task '{rule.name}' takes {count} image(s), got {n_images}"
            + ("; use keyframes for several images" if hi == 1 else ""),
        )
    return chosen[0] if chosen else None


def _normalise(p: int, num_frames: int) -> int:
    q = p + num_frames if p < 0 else p
    if not 0 <= q < num_frames:
        raise TaskError(
            "cond_frames",
            f"frame {p} is outside the {num_frames}-frame clip; use 0..{num_frames - 1} "
            f"(or -{num_frames}..-1 counting from the end)",
        )
    return q


def fit_default_latents(default: tuple[int, ...], count: int) -> list[int]:
    """A video task's default latents, shrunk to fit a short clip: the opening ones (k >= 0) and
    the closing ones (k < 0, from the end) lose their innermost latent in turn until they do not
    overlap and at least one latent is left free to generate. E.g. transition on 5 latents:
    (0, 1, 2, -3, -2, -1) -> 0, 1, 3, 4."""
    front = sorted(k for k in default if k >= 0)
    back = sorted(count + k for k in default if k < 0)
    while front or back:
        overlap = bool(front and back and front[-1] >= back[0])
        if not overlap and len({*front, *back}) <= count - 1:
            break
        if len(front) > len(back):
            front.pop()
        else:  # a tie keeps the opening latents
            back.pop(0)
    return [*front, *back]


def _default_positions(rule: TaskRule, num_frames: int, r: int, n_images: int) -> list[int]:
    if rule.default_latents is None:  # evenly spaced, one per image
        if n_images == 1:
            return [0]
        return [
            (i * (num_frames - 1) + (n_images - 1) // 2) // (n_images - 1) for i in range(n_images)
        ]
    count = latent_frames(num_frames, r)
    if rule.align in ("image", "first_frame"):
        latents = [k + count if k < 0 else k for k in rule.default_latents]
    else:
        latents = fit_default_latents(rule.default_latents, count)
    if rule.align in ("image", "first_frame"):
        return [r * k for k in latents]  # latent 0 -> frame 0, the last latent -> the last frame
    return [p for k in latents for p in pixel_frames_of_latent(k, r)]


def _single_frame_slots(rule, positions, r, n_images, loop_input) -> list[CondSlot]:
    """One slot per listed frame, in listed order (images, or loop's one picture)."""
    if rule.align == "image" and len(positions) != n_images:
        raise TaskError(
            "cond_frames",
            f"{len(positions)} frame(s) {positions} for {n_images} image(s): list one frame per "
            "image, in image order",
        )
    seen: dict[int, int] = {}
    slots = []
    for j, p in enumerate(positions):
        k = latent_index(p, r)
        if k in seen:
            span = pixel_frames_of_latent(k, r)
            raise TaskError(
                "cond_frames",
                f"frames {seen[k]} and {p} fall in the same latent frame {k} (frames "
                f"{span[0]}..{span[-1]}); one latent holds one picture, so keep them at least "
                f"{r} frames apart or drop one",
            )
        seen[k] = p
        if loop_input == "video":
            slots.append(CondSlot(k, 0.0, (p,), "video", None, (0,), True))
        else:
            slots.append(CondSlot(k, 0.0, (p,), "image", 0 if loop_input else j, (), True))
    return slots


def _check_length(column: str, have: int, need: int, frames: tuple[int, ...]) -> None:
    if have < need:
        raise TaskError(
            column,
            f"the {column} has {have} frames but the conditioning needs {need} (they fill output "
            f"frames {frames[0]}..{frames[-1]}); give a longer video or condition fewer frames",
        )


def _video_slots(rule, positions, r, num_frames, video_frames, video_b_frames) -> list[CondSlot]:
    """Every latent touched by a listed frame, covering all of its pixel frames, in latent order."""
    latents = sorted({latent_index(p, r) for p in positions})
    count = latent_frames(num_frames, r)
    if rule.align == "same":
        groups = [("video", latents, video_frames)]
    else:  # transition: the first half of the clip from A's end, the second from B's start
        a, b = [k for k in latents if 2 * k < count], [k for k in latents if 2 * k >= count]
        groups = [("video", a, video_frames), ("video_b", b, video_b_frames)]
    slots = []
    for source, group, have in groups:
        if not group:
            continue
        covered = tuple(p for k in group for p in pixel_frames_of_latent(k, r))
        first, last = covered[0], covered[-1]
        if rule.align == "same":
            need, offset = last + 1, 0
        elif source == "video":
            need, offset = last - first + 1, have - 1 - last
        else:
            need, offset = last - first + 1, -first
        _check_length(source, have, need, covered)
        for k in group:
            pix = pixel_frames_of_latent(k, r)
            slots.append(CondSlot(k, 0.0, pix, source, None, tuple(p + offset for p in pix)))
    return slots


def _multipliers(given: tuple[float, ...], default: tuple[float, ...], n: int, per: str):
    if not given:
        return (default + default[-1:] * n)[:n]
    bad = [m for m in given if not 0.0 <= m <= 1.0]
    if bad:
        raise TaskError("noise_multipliers", f"{bad} outside [0, 1]: 0 keeps a frame exact, "
                        "1 makes it as noisy as a free frame")  # fmt: skip
    if len(given) == 1:
        return given * n
    if len(given) != n:
        raise TaskError(
            "noise_multipliers",
            f"{len(given)} multipliers for {n} conditioned {per}: give one per {per[:-1]}, "
            "or a single value for all",
        )
    return given


def plan_conditioning(
    task: str,
    *,
    num_frames: int,
    temporal_factor: int,
    cond_frames: Any = None,
    noise_multipliers: Any = None,
    n_images: int = 0,
    video_frames: int | None = None,
    video_b_frames: int | None = None,
) -> CondPlan:
    """Resolve a row's conditioning into latent slots, or raise TaskError naming the column.

    ``cond_frames`` and ``noise_multipliers`` accept anything ``parse_int_list`` /
    ``parse_float_list`` read; empty means the task's default. ``video_frames`` /
    ``video_b_frames`` are the input videos' frame counts (None: no such video).
    """
    rule = RULES.get(task)
    if rule is None:
        raise TaskError("task", f"unknown task {task!r}; use one of {', '.join(TASKS)}")
    r = temporal_factor
    _check_num_frames(num_frames, r)
    loop_input = _check_inputs(rule, n_images, video_frames, video_b_frames)
    frames = parse_int_list(cond_frames, "cond_frames")
    given = parse_float_list(noise_multipliers, "noise_multipliers")
    if not rule.align:
        for column, value in (("cond_frames", frames), ("noise_multipliers", given)):
            if value:
                raise TaskError(column, f"task '{task}' conditions nothing; leave {column} empty "
                                "or use i2v, keyframes or extend")  # fmt: skip
        return CondPlan(task, num_frames, r)
    positions = [_normalise(p, num_frames) for p in frames]
    positions = positions or _default_positions(rule, num_frames, r, n_images)
    if rule.align in ("image", "first_frame"):
        slots = _single_frame_slots(rule, positions, r, n_images, loop_input)
        per = "images" if rule.align == "image" else "frames"
    else:
        slots = _video_slots(rule, positions, r, num_frames, video_frames, video_b_frames)
        per = "latent frames"
    count = latent_frames(num_frames, r)
    if len(slots) >= count:
        raise TaskError(
            "cond_frames",
            f"the frames listed condition all {count} latent frames; leave at least one free "
            "so there is something to generate",
        )
    multipliers = _multipliers(given, rule.default_multipliers, len(slots), per)
    slots = [replace(s, multiplier=float(m)) for s, m in zip(slots, multipliers)]
    return CondPlan(task, num_frames, r, tuple(sorted(slots, key=lambda s: s.latent_index)))


def conditioning_video_layout(
    plan: CondPlan, num_frames: int
) -> tuple[tuple[str, int] | None, ...]:
    """Which (source, source frame) fills each output frame of the video the pipeline encodes.

    The causal VAE makes latent k depend on pixel frames 0..r*k, so the frames before a
    conditioned latent matter. Where the input video lines up with the output ("same"), every
    frame up to the last conditioned one is the real input frame, exactly as Pusa's V2V encodes
    it. Elsewhere a gap repeats the nearest earlier filled frame (a held frame, not a cut to
    black), and frames before the first filled one repeat it. Frames after the last conditioned
    frame change no conditioned latent, so they are None: encode ``layout[:last + 1]`` (always
    r*k+1 frames). Plans with no video slots give all None.
    """
    if num_frames != plan.num_frames:
        raise ValueError(f"plan is for {plan.num_frames} frames, not {num_frames}")
    filled: dict[int, tuple[str, int]] = {}
    for slot in plan.slots:
        if not slot.encode_alone:
            filled.update(
                (p, (slot.source, s)) for p, s in zip(slot.pixel_frames, slot.source_frames)
            )
    if not filled:
        return (None,) * num_frames
    if RULES[plan.task].align == "same":
        filled = {p: ("video", p) for p in range(max(filled) + 1)}
    current = filled[min(filled)]
    layout: list[tuple[str, int] | None] = []
    for p in range(max(filled) + 1):
        current = filled.get(p, current)
        layout.append(current)
    return tuple(layout) + (None,) * (num_frames - len(layout))
