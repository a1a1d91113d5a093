"""The official Pusa sampling loops, restated from reading them, to check our sampler against.

Source: Yaofang-Liu/Pusa-VidGen at 8a8c4f5 (`REFERENCE`). Every rule below cites the upstream
file:line it restates; none of its code is copied. The restatement owns the loop (scheduler
set-up, timestep vector, one-time noising of conditioned frames, per-frame step, CFG, the Wan2.2
switch, Mochi's sigma convention) and calls the DiT the way upstream calls it:

- Pusa V1 (Wan2.1 / Wan2.2): `dit(latents, timestep, context)` with the (1, F) timestep vector
  (`model_fn_wan_video`, `PusaV1/diffsynth/pipelines/wan_video_pusa_multi_frames.py:609-700`);
- Pusa V0.5 (Mochi): `dit(z, sigma, t5_feat, t5_mask)` with the (1, T) sigma, 1 = noise; the DiT
  embeds 1 - sigma itself (`src/genmo/pusa/pipelines_multi_frames_release.py:386-399`).

Upstream paths below are relative to that repository: `V1/` stands for `PusaV1/diffsynth/`,
`V05/` for `src/genmo/pusa/`.

What the reference is given, not restated: our tiny twins' DiT modules, our prompt embeddings
and our conditioning latents (prompt encoding, image/video preprocessing and the VAE are not the
loop). Pusa V1's noise it makes itself, as upstream does (a CPU generator seeded by the item's
seed); Pusa V0.5's it takes from us (upstream draws it from the global CUDA generator, in bf16,
which no CPU run can replay).

Run as a script, it prints docs/parity.md: `python tests/upstream_reference.py --table >
docs/parity.md` (about two minutes on one core).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

REFERENCE = "Yaofang-Liu/Pusa-VidGen@8a8c4f5"

# Upstream behaviours the reference reproduces that our sampler deliberately does not (each is a
# row of docs/parity.md's "deliberate differences"); a test turns one off to show it is the only
# difference in a cell that exercises it.
QUIRKS = frozenset({"zero_timestep_freezes", "bf16_step_lookup"})

# Which upstream loop runs each of our tasks. Pusa V1: the T2V pipeline, the multi-frames
# (images) pipeline or the V2V (video) pipeline; `loop` has no upstream script and uses the
# multi-frames pipeline with one picture at two positions.
WAN_LOOPS = {
    "t2v": "t2v",
    "i2v": "multi_frames",
    "start_end": "multi_frames",
    "keyframes": "multi_frames",
    "loop": "multi_frames",
    "extend": "v2v",
    "complete": "v2v",
    "transition": "v2v",
}
# Pusa V0.5: t2v and i2v are `pipelines_ti2v_release.py` (no image; one `int` position), image
# sets `pipelines_multi_frames_release.py`, videos `pipelines_v2v_release.py`. All three share
# `mochi_upstream`'s loop; they differ only in where the multipliers come from.

# ---------------------------------------------------------------------------------------------
# Pusa V1 (Wan2.1, Wan2.2)


def upstream_noise(shape: Sequence[int], seed: int) -> Tensor:
    """`BasePipeline.generate_noise` as the Pusa V1 pipelines call it: float32 from a fresh CPU
    generator seeded with the seed (`V1/pipelines/base.py:124-127`, called with
    `rand_device="cpu", dtype=torch.float32` at `V1/pipelines/wan_video_pusa_multi_frames.py:412`,
    `wan_video_pusa_v2v.py:413`, `wan_video_pusa.py:406`)."""
    gen = torch.Generator("cpu")
    gen.manual_seed(seed)
    return torch.randn(*shape, generator=gen, dtype=torch.float32)


def flow_match_schedule(steps: int, shift: float) -> tuple[Tensor, Tensor]:
    """(sigmas, timesteps), each (steps,) float32, as DiffSynth's FlowMatch scheduler holds them.

    The Pusa pipelines build it with `shift=5, sigma_min=0.0, extra_one_step=True`
    (`V1/pipelines/wan_video_pusa_multi_frames.py:30`; the T2V pipeline the same,
    `wan_video_pusa.py`) and call `set_timesteps(N, denoising_strength=1.0, shift=sigma_shift)`
    (`:407`). `set_timesteps` (`V1/schedulers/flow_match_pusa_v2v.py:16-29`, the same in
    `flow_match_pusa.py:18-31`): N+1 points from sigma_start = 1 down to sigma_min = 0 in the
    default dtype, the last one dropped, then shifted as shift*s / (1 + (shift-1)*s), and
    timesteps = 1000 * sigmas. The step after the last goes to 0 (`step`, `:60-68`).
    """
    start, stop = 1.0, 0.0  # sigma_min + (sigma_max - sigma_min) * strength, with min 0, max 1
    points = torch.linspace(start, stop, steps + 1, dtype=torch.float32)
    s = points[:steps]
    sigmas = (shift * s) / ((shift - 1) * s + 1)
    return sigmas, sigmas * 1000


def _nearest(timesteps: Tensor, t: Tensor) -> int:
    """The schedule index whose timestep is closest to t (`argmin(|timesteps - t|)`, the lookup
    of every scheduler method, `V1/schedulers/flow_match_pusa_v2v.py:47,57,121`)."""
    return int((timesteps - t.float()).abs().argmin())


def _after(sigmas: Tensor, index: int) -> Tensor:
    """sigma_{index+1}, or 0 past the end (`flow_match_pusa_v2v.py:60-70`)."""
    return sigmas[index + 1] if index + 1 < len(sigmas) else torch.zeros((), dtype=sigmas.dtype)


def wan_upstream(
    dits: Sequence[torch.nn.Module],
    *,
    seed: int,
    shape: Sequence[int],
    steps: int,
    shift: float,
    guidance: float,
    positive: Tensor,
    negative: Tensor | None,
    cond: tuple[Sequence[int], Tensor, Sequence[float]] | None,
    loop: str,
    boundary: float = 0.875,
    latent_dtype: torch.dtype = torch.float32,
    timestep_dtype: torch.dtype = torch.bfloat16,
    quirks: frozenset[str] = QUIRKS,
) -> Tensor:
    """Final latents of a Pusa V1 run: `loop` is "t2v", "multi_frames" or "v2v".

    `dits` is `(dit,)` for Wan2.1 or `(high_noise, low_noise)` for Wan2.2. `cond` is (latent
    indices, clean latents (1, C, n, h, w) in index order, multipliers). The official scripts run
    with `torch_dtype=torch.bfloat16` (e.g. `PusaV1/examples/pusavideo/
    wan_14b_multi_frames_pusa.py:40,53`): the pipeline casts both the timestep vector and the
    initial latents to it. `timestep_dtype` is that cast for the timesteps (bf16, always);
    `latent_dtype` for the noise and initial state: bf16 is upstream's, float32 (the default)
    compares with our default fp32 start, bf16 with `numerics = "upstream"`.
    """
    if loop not in ("t2v", "multi_frames", "v2v"):
        raise ValueError(f"unknown Pusa V1 loop {loop!r}")
    if (loop == "t2v") != (cond is None):
        raise ValueError("the t2v loop takes no conditioning; the others need it")
    sigmas, timesteps = flow_match_schedule(steps, shift)
    frames = shape[2]

    # Initial state. `latents = noise` after `.to(torch_dtype)` (`wan_video_pusa_multi_frames.py:
    # 412-413,423`; `wan_video_pusa_v2v.py:413-414,423`; `wan_video_pusa.py:406-407,415`).
    latents = upstream_noise(shape, seed).to(latent_dtype)
    slots: list[tuple[int, float]] = []
    if cond is not None:
        indices, clean, multipliers = cond
        for j, (index, m) in enumerate(zip(indices, multipliers, strict=True)):
            # multi_frames drops positions outside [0, F) silently (`..._multi_frames.py:431`);
            # v2v checks nothing, and its `latents[:, :, i:i+1]` slice is empty for i = -1
            # (`wan_video_pusa_v2v.py:433-437`): the slice form below keeps that behaviour.
            if loop == "multi_frames" and not 0 <= index < frames:
                continue
            latents[:, :, index : index + 1] = clean[:, :, j : j + 1]  # into the latent dtype
            slots.append((index, float(m)))

    noised = [False] * frames  # `flag`: each conditioned frame is noised once
    for k in range(steps):
        t_k = timesteps[k]
        # Wan2.2: the low-noise expert once the step's fp32 timestep is below boundary * 1000,
        # decided before the timestep vector is built (`V1/pipelines/wan22_video_pusa.py:515-524`,
        # `wan22_video_pusa_multi_frames.py:533-540`, `wan22_video_pusa_v2v.py:533-540`).
        dit = dits[0]
        if len(dits) > 1 and t_k.item() < boundary * 1000:
            dit = dits[1]
        # The (1, F) vector in the pipeline dtype (`..._multi_frames.py:488`, `..._v2v.py:489`,
        # `wan_video_pusa.py:467`).
        t = t_k.expand(1, frames).to(timestep_dtype)
        if loop != "t2v":
            for index, m in slots:
                t[:, index] = t[:, index] * m  # in bf16, by a Python float (`:493-495`)
                if not noised[index] and m > 0:
                    # Once, at the first step: the same seeded noise made again (`:497-501`),
                    # sigma from the step's largest timestep, times m (`:502-503`;
                    # `add_noise_for_conditioning_frames`, `flow_match_pusa_v2v.py:113-129`).
                    noised[index] = True
                    eps = upstream_noise(shape, seed).to(latent_dtype)
                    s = (sigmas[_nearest(timesteps, t.max())] * m).view(1, 1, 1, 1, 1)
                    # A 5-D float32 sigma, as upstream's: the mix runs in float32 even when the
                    # latents are bf16, and is rounded when written back.
                    mixed = (1 - s) * latents[:, :, index : index + 1]
                    latents[:, :, index : index + 1] = mixed + s * eps[:, :, index : index + 1]
            # Truncated and cast back, every frame (`:505`); the T2V pipeline does not.
            t = t.to(torch.long).to(timestep_dtype)

        # CFG: positive pass, then negative only when cfg != 1, combined as
        # neg + cfg * (pos - neg) (`..._multi_frames.py:510-525`, `wan_video_pusa.py:475-490`).
        v = dit(latents, t, positive)
        if guidance != 1.0:
            v_neg = dit(latents, t, negative)
            v = v_neg + guidance * (v - v_neg)

        sigma, sigma_next = _wan_step_sigmas(sigmas, timesteps, t, k, slots, loop, quirks)
        # prev = sample + v * (sigma_ - sigma) per frame (`flow_match_pusa_v2v.py:91`,
        # `flow_match_pusa.py:79`). The 5-D float32 sigmas promote bf16 latents to float32 from
        # the first step on.
        latents = latents + v * (sigma_next - sigma).view(1, 1, frames, 1, 1)
    return latents


def _wan_step_sigmas(
    sigmas: Tensor,
    timesteps: Tensor,
    t: Tensor,
    k: int,
    slots: list[tuple[int, float]],
    loop: str,
    quirks: frozenset[str],
) -> tuple[Tensor, Tensor]:
    """Each frame's (sigma, sigma_next) for `scheduler.step` at step k, given the DiT's timestep
    vector. The scheduler is not told k: it finds the step again from the bf16 timestep (the
    nearest fp32 timestep), which lands on a neighbouring step once the schedule's spacing near
    t is under one bf16 step (4 for t >= 512): at some step of every count from 60 steps up
    (quirk "bf16_step_lookup"; without it, step k)."""
    frames = t.shape[1]

    def lookup(value: Tensor) -> int:
        return _nearest(timesteps, value) if "bf16_step_lookup" in quirks else k

    if loop == "t2v":
        # `FlowMatchSchedulerPusa.step` (`V1/schedulers/flow_match_pusa.py:56-79`): each frame
        # looks up its own timestep; a frame at timestep 0 gets sigma 0 (its sigma_next kept).
        ids = [lookup(t[0, f]) for f in range(frames)]
        sigma = torch.stack([sigmas[i] for i in ids])
        sigma_next = torch.stack([_after(sigmas, i) for i in ids])
        sigma[t[0] == 0] = 0
        return sigma, sigma_next
    # `FlowMatchSchedulerPusaV2V.step` (`V1/schedulers/flow_match_pusa_v2v.py:54-91`): one
    # lookup from the vector's largest timestep (`:56-57`, a free frame's), for all frames.
    index = lookup(t.max())
    sigma = sigmas[index].expand(frames).clone()
    sigma_next = _after(sigmas, index).expand(frames).clone()
    for f, m in slots:
        if "zero_timestep_freezes" in quirks and t[0, f] == 0:
            # A conditioned frame whose (truncated) timestep is 0 does not move (`:74-77`):
            # m = 0 always, and m > 0 once bf16(t_k) * m < 1.
            sigma[f] = sigma_next[f] = 0
            continue
        sigma[f] = sigma[f] * m  # "timestep = sigma * 1000, equivalent" (`:78-80`)
        sigma_next[f] = sigma_next[f] * m
    # `:84-87` zero the frames where the broadcast maximum is 0: none while t_k > 0, which holds
    # for every step of the schedule.
    return sigma, sigma_next


# ---------------------------------------------------------------------------------------------
# Pusa V0.5 (Mochi)


def mochi_sigma_schedule(steps: int, threshold_noise: float = 0.025) -> list[float]:
    """genmo's `linear_quadratic_schedule(N, 0.025)` as the demos call it (`demos/
    cli_test_ti2v_release.py:97`; defined at `V05/pipelines_multi_frames_release.py:53-67`): N+1
    Python floats from 1.0 to 0.0. Its "time" x (0 = noise) rises linearly by threshold/L for
    the first L = N//2 steps, then follows the quadratic through (L, threshold) that reaches 1 at
    step N with matching slope at L; sigma = 1 - x.
    """
    linear = steps // 2
    quadratic = steps - linear
    gap = linear - threshold_noise * steps
    a = gap / (linear * quadratic**2)
    b = threshold_noise / linear - 2 * gap / quadratic**2
    c = a * linear**2
    times = [threshold_noise * i / linear for i in range(linear)]
    times += [a * i**2 + b * i + c for i in range(linear, steps)]
    return [1.0 - x for x in times] + [0.0]


def mochi_upstream(
    dit: torch.nn.Module,
    *,
    noise: Tensor,
    steps: int,
    guidance: float,
    positive: tuple[Tensor, Tensor],
    negative: tuple[Tensor, Tensor],
    cond: tuple[Sequence[int], Tensor, Sequence[float]] | None,
    threshold_noise: float = 0.025,
    noise_dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Final DiT-space latents of `sample_model` (`V05/pipelines_multi_frames_release.py:333-444`;
    `pipelines_ti2v_release.py:333-443` and `pipelines_v2v_release.py:333-436` share the loop).

    `noise` is ours (see the module doc); upstream draws it in bf16 (`:417-421`), so
    `noise_dtype=torch.bfloat16` reproduces that rounding, float32 our default. Upstream always
    runs both CFG passes, so `negative` is needed even at guidance 1. The result is before
    `dit_latents_to_vae_latents` (`:444`), which belongs to decoding.
    """
    frames = noise.shape[2]
    schedule = mochi_sigma_schedule(steps, threshold_noise)
    slots = []
    # z_0: zeros with the conditioning latents written at their positions, float32 (`:361-371`;
    # `pipelines_ti2v_release.py:363-373`, `pipelines_v2v_release.py:363-371`).
    z0 = torch.zeros(noise.shape, dtype=torch.float32)
    if cond is not None:
        indices, clean, multipliers = cond
        for j, (p, m) in enumerate(zip(indices, multipliers, strict=True)):
            z0[:, :, p] = clean[:, :, j]
            slots.append((p, float(m)))
    eps = noise.to(noise_dtype)

    def per_frame(x: Tensor) -> Tensor:
        return x.view(1, 1, frames, 1, 1)

    z = z0
    for i in range(steps):
        # The (B, T) sigma, float32 from Python floats, conditioned positions times their
        # multiplier (`:405-414`; ti2v `:404-412`, v2v `:403-408`).
        sigma = torch.tensor([[schedule[i]] * frames], dtype=torch.float32)
        for p, m in slots:
            sigma[:, p] = sigma[:, p] * m
        if i == 0:
            # z = (1 - sigma) z_0 + sigma * noise, once (`:416-421`).
            z = (1.0 - per_frame(sigma)) * z0 + per_frame(sigma) * eps
        # dsigma = sigma_i - sigma_{i+1}, the next sigma times m for conditioned frames
        # (`:425-430`; ti2v `:423-428`, v2v `:419-422`).
        dsigma = sigma - schedule[i + 1]
        for p, m in slots:
            dsigma[:, p] = sigma[:, p] - schedule[i + 1] * m
        # CFG, unbatched: conditional pass, unconditional pass, uncond + g * (cond - uncond),
        # in the latents' dtype (`:386-399`).
        out_cond = dit(z, sigma, *positive).to(z)
        out_uncond = dit(z, sigma, *negative).to(z)
        pred = out_uncond + guidance * (out_cond - out_uncond)
        z = z + per_frame(dsigma) * pred  # (`:439`)
    return z


# ---------------------------------------------------------------------------------------------
# Our pipelines against the reference: one cell of the grid


FAMILIES = {"wan2.1": "tiny.toml", "wan2.2": "tiny-wan22.toml", "mochi": "tiny-mochi.toml"}
TASK_ORDER = ("t2v", "i2v", "start_end", "keyframes", "extend", "complete", "transition", "loop")
STEPS = (4, 10, 30)
GUIDANCE = (1.0, 3.0)
SIZE = {"height": 32, "width": 32}
FRAMES = {"wan2.1": 17, "wan2.2": 17, "mochi": 25}  # 5 latent frames each
TOLERANCE = 1e-5
PIPELINES = Path(__file__).resolve().parents[1] / "pipelines"


@dataclasses.dataclass(frozen=True)
class Media:
    """Input files for every task: three pictures and two clips."""

    images: tuple[str, str, str]
    video: str
    video_b: str


def make_media(folder: Path) -> Media:
    """Random 40x40 pictures and two 32-frame 32x32 clips (a moving square), in `folder`."""
    from PIL import Image

    from pusa_batch import video

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(12)
    images = []
    for i in range(3):
        path = folder / f"picture{i}.png"
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(path)
        images.append(str(path))
    clips = []
    for name, colour in (("a", (220, 60, 30)), ("b", (30, 90, 230))):
        frames = np.full((32, 32, 32, 3), 40, dtype=np.uint8)
        for f in range(32):
            frames[f, 8:20, f % 24 : f % 24 + 8] = colour
        path = folder / f"clip_{name}.mp4"
        path.write_bytes(video.encode_mp4(frames, fps=8))
        clips.append(str(path))
    return Media(tuple(images), clips[0], clips[1])


def task_item(spec, task: str, steps: int, guidance: float, media: Media):
    """An item of `task` at the tiny grid size, with the task's default positions and
    multipliers."""
    from pusa_batch.item import Item

    inputs = {
        "t2v": {},
        "i2v": {"images": media.images[:1]},
        "start_end": {"images": media.images[:2]},
        "keyframes": {"images": media.images},
        "extend": {"video": media.video},
        "complete": {"video": media.video},
        "transition": {"video": media.video, "video_b": media.video_b},
        "loop": {"images": media.images[:1]},
    }[task]
    fields = {
        "id": f"{task}-{steps}-{guidance:g}",
        "row": 1,
        "task": task,
        "prompt": "a red car on a road",
        "negative_prompt": spec.defaults.negative_prompt,
        "images": (),
        "video": None,
        "video_b": None,
        "cond_frames": None,
        "noise_multipliers": None,
        "num_frames": FRAMES[spec.family],
        "fps": 8,
        "seed": 3,
        "steps": steps,
        "guidance_scale": guidance,
        "shift": spec.defaults.shift,
        **SIZE,
        **inputs,
    }
    return Item(**fields)


def load_tiny(family: str):
    """The family's tiny twin; Mochi's prompts at 32 tokens, not 256 (the text stream is most of
    a tiny Mochi forward, and the loop does not care how long the prompt embedding is)."""
    from pusa_batch.pipelines import load_pipeline
    from pusa_batch.pipelines.spec import load_pipeline_spec

    spec = load_pipeline_spec(PIPELINES / FAMILIES[family])
    if family == "mochi":
        options = dataclasses.replace(spec.options, text_max_length=32)
        spec = dataclasses.replace(spec, options=options)
    return load_pipeline(spec)


def with_options(pipe, **options):
    """The same loaded pipeline (same modules) with other options: for `numerics`."""
    other = copy.copy(pipe)
    other.spec = dataclasses.replace(
        pipe.spec, options=dataclasses.replace(pipe.spec.options, **options)
    )
    return other


def ours(pipe, prepared) -> Tensor:
    return pipe.sample(prepared)


def reference(
    pipe, item, prepared, *, bf16_start: bool = False, quirks: frozenset[str] = QUIRKS
) -> Tensor:
    """The reference's final latents for `item`, from `prepared`'s prompts and conditioning
    latents (and, for Pusa V0.5, its noise)."""
    family = pipe.spec.family
    cond = None
    if prepared.cond is not None:
        c = prepared.cond
        cond = (c.latent_index, c.clean, c.multipliers)
    with torch.inference_mode():
        if family == "mochi":
            negative = prepared.negative
            if negative is None:  # we skip the negative pass at guidance 1; upstream does not
                negative = pipe.encode_prompt(item.negative_prompt)
            return mochi_upstream(
                pipe.dit,
                noise=prepared.noise,
                steps=item.steps,
                guidance=item.guidance_scale,
                positive=prepared.positive,
                negative=negative,
                cond=cond,
                threshold_noise=pipe.spec.options.threshold_noise,
                noise_dtype=torch.bfloat16 if bf16_start else torch.float32,
            )
        # `latent_size`, `wan_video_pusa_multi_frames.py:411`
        shape = (1, 16, (item.num_frames - 1) // 4 + 1, item.height // 8, item.width // 8)
        return wan_upstream(
            [pipe.experts[name] for name in pipe.spec.experts],
            seed=item.seed,
            shape=shape,
            steps=item.steps,
            shift=item.shift,
            guidance=item.guidance_scale,
            positive=prepared.positive,
            negative=prepared.negative,
            cond=cond,
            loop=WAN_LOOPS[item.task],
            boundary=pipe.spec.options.switch_boundary,
            latent_dtype=torch.bfloat16 if bf16_start else torch.float32,
            quirks=quirks,
        )


def max_diff(a: Tensor, b: Tensor) -> float:
    return float((a.float() - b.float()).abs().max())


# ---------------------------------------------------------------------------------------------
# docs/parity.md


def measure(media: Media, families: Sequence[str] = tuple(FAMILIES)) -> dict:
    """{(family, task, steps, guidance): (fp32 parity, bf16-start parity, fp32 vs bf16 start)}."""
    results = {}
    for family in families:
        pipe = load_tiny(family)
        upstream = with_options(pipe, numerics="upstream")
        for task in TASK_ORDER:
            for steps in STEPS:
                for g in GUIDANCE:
                    item = task_item(pipe.spec, task, steps, g, media)
                    prepared = pipe.prepare(item)
                    ours_fp32, ours_bf16 = ours(pipe, prepared), ours(upstream, prepared)
                    results[family, task, steps, g] = (
                        max_diff(ours_fp32, reference(pipe, item, prepared)),
                        max_diff(ours_bf16, reference(pipe, item, prepared, bf16_start=True)),
                        max_diff(ours_fp32, ours_bf16),
                    )
    return results


def _fmt(x: float) -> str:
    return "0" if x == 0 else f"{x:.1e}"


def table(results: dict, column: int) -> str:
    heads = [f"{s} steps, g {g:g}" for s in STEPS for g in GUIDANCE]
    lines = ["| family | task | " + " | ".join(heads) + " |", "|---|---|" + "---|" * len(heads)]
    families = sorted({k[0] for k in results}, key=list(FAMILIES).index)
    for family in families:
        for task in TASK_ORDER:
            cells = [_fmt(results[family, task, s, g][column]) for s in STEPS for g in GUIDANCE]
            lines.append(f"| {family} | {task} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summary(results: dict, column: int) -> str:
    return _fmt(max(v[column] for v in results.values()))


def parity_doc(results: dict, seconds: float) -> str:
    return DOC.format(
        reference=REFERENCE,
        tolerance=_fmt(TOLERANCE),
        fp32_table=table(results, 0),
        bf16_table=table(results, 1),
        start_table=table(results, 2),
        fp32_max=summary(results, 0),
        bf16_max=summary(results, 1),
        start_max=summary(results, 2),
        torch=torch.__version__,
        seconds=f"{seconds:.0f}",
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", action="store_true", help="print docs/parity.md to stdout")
    args = parser.parse_args(argv)
    if not args.table:
        parser.print_help()
        return 2
    import tempfile

    torch.set_num_threads(1)
    start = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        results = measure(make_media(Path(tmp)))
    sys.stdout.write(parity_doc(results, time.monotonic() - start))
    return 0


DOC = """\
# Parity with the official Pusa loops

Generated by `python tests/upstream_reference.py --table > docs/parity.md` (took {seconds} s on
one CPU core, torch {torch}, float32). Edit the text in `tests/upstream_reference.py` (`DOC`),
not here.

## What is compared

`tests/upstream_reference.py` restates the sampling loops of
`{reference}` from reading them: the FlowMatch scheduler set-up (float32
sigmas, shift 5), the per-frame timestep vector (bf16, multiplied, truncated), the one-time
noising of conditioned frames with the same seeded noise, the per-frame step, CFG (positive
pass, negative pass, `neg + g * (pos - neg)`), the Wan2.2 expert switch (`t_k < 875` runs the
low-noise expert) and Pusa V0.5's sigma convention (the DiT gets sigma, 1 = noise, and embeds
1 - sigma) and update `z += (sigma - sigma_next) * pred`. Each rule cites the upstream file:line
it restates; no upstream code is copied. The reference owns the loop and calls our tiny twins'
DiT modules the way upstream calls its DiT (`dit(latents, timestep, context)`; `dit(z, sigma,
t5_feat, t5_mask)`), from our prompt embeddings and conditioning latents; it makes Pusa V1's
noise itself, as upstream does (a CPU generator seeded with the seed), and takes Pusa V0.5's
from us (upstream draws it from the global CUDA generator). Its final latents are compared with
our pipeline's `prepare` + `sample` of the same item.

`tests/test_upstream_reference.py` asserts at most {tolerance} in every cell of table 1 (and
in a sample of table 2); the tables below are the measured maximum absolute differences of the
final latents. The grid: the tiny twins (`pipelines/tiny.toml`, `tiny-wan22.toml`,
`tiny-mochi.toml`, its prompts at 32 tokens), 32x32 pixels, 17 frames (Wan) or 25 frames
(Mochi), so 5 latent frames, seed 3, each task's default positions and multipliers
(`manifests/TASKS.md`), from three random pictures and two 32-frame clips. Which upstream loop
each task runs:

| task | Pusa V1: `wan_video_pusa*.py`, `wan22_...` | Pusa V0.5: `pipelines_*_release.py` |
|---|---|---|
| t2v | T2V (`wan_video_pusa.py`: no truncation of t) | ti2v, no image |
| i2v | multi-frames (`..._multi_frames.py`) | ti2v, one position |
| start_end, keyframes | multi-frames | multi_frames |
| loop (no upstream script) | multi-frames, one picture at two positions | multi_frames |
| extend, complete, transition | V2V (`..._v2v.py`) | v2v |

Zeros are cells where both sides do the same float operations at every step (Wan t2v, and
loop, whose conditioned frames never move); the rest is rounding: our step is
`x + m * (sigma' - sigma) * v`, upstream's `x + (m sigma' - m sigma) * v`, and at guidance 1
Mochi upstream still computes `u + 1 * (c - u)` where we run the positive pass alone.

## 1. Our default (`numerics = "fp32"`) against the reference from an fp32 start

Largest difference: {fp32_max}.

{fp32_table}

## 2. `numerics = "upstream"` against the reference from its scripts' bf16 start

Largest difference: {bf16_max}.

{bf16_table}

## 3. What the bf16 start changes: ours, `numerics = "fp32"` against `"upstream"`

Largest difference: {start_max}. This is the whole effect of rounding the start on these
twins: about the rounding itself (half a bf16 step is 0.0078 for values in [2, 4)), carried
through the loop (random weights: real weights may amplify or damp it differently).

{start_table}

## The option `numerics`

`[options] numerics` in the pipeline file, `"fp32"` (the default) or `"upstream"`.

- `"fp32"`: the noise is float32 from the item's CPU generator, conditioning latents stay as
  encoded, and the sampler state is float32 throughout (the DiT itself runs in `dtype`).
- `"upstream"`: what the official pipelines hold in bf16 before their first step is rounded to
  bf16 values first (`sampler.initial_latents(rounding=...)`), then the loop runs in float32 as
  before:
  - Pusa V1 (`"state"`): the noise (made in float32, then `.to(torch_dtype)`, bf16 in every
    script: `wan_video_pusa_multi_frames.py:412-413`, `wan_video_pusa_v2v.py:413-414`,
    `wan_video_pusa.py:406-407`, `examples/pusavideo/wan_14b_multi_frames_pusa.py:40,53`), the
    conditioning latents (written into the bf16 latents, `..._multi_frames.py:435`,
    `..._v2v.py:437`; upstream's VAE also runs in bf16) and each conditioned frame after its
    one-time noising (mixed in float32, written back into the bf16 latents, `:503`). Upstream's
    state becomes float32 at its first step too: the 5-D float32 sigmas of `scheduler.step`
    promote it (`schedulers/flow_match_pusa_v2v.py:91`).
  - Pusa V0.5 (`"noise"`): the noise only (`torch.randn(..., dtype=torch.bfloat16)`,
    `pipelines_multi_frames_release.py:417-421`, `pipelines_ti2v_release.py:415-419`,
    `pipelines_v2v_release.py:411-415`); z_0 and the mix `(1 - sigma) z_0 + sigma * noise` are
    float32 there, and stay so here.
- Neither reproduces two things: upstream Wan combines CFG in the DiT's output dtype (bf16 on a
  GPU, `..._multi_frames.py:523`) where we combine float32 casts of the two passes; and V0.5's
  noise values (a global CUDA generator; ours has the same bf16 value set, not the same draws).
- `numerics` is part of the pipeline identity only when it is `"upstream"`: existing specs keep
  their hash.

## Deliberate differences

Where the reference can reproduce an upstream behaviour from our inputs (1, 2, 3), a test runs a
cell that exercises it, then switches that one rule off (or gives the reference the index we
use) and shows the reference matches ours again: the behaviour is the only difference there.
The others concern inputs our plans never produce (4, 7), sit outside the loop (6), are
rounding (5) or a crash (8).

1. **The step is found again from the bf16 timestep.** Upstream's `scheduler.step` is given
   the DiT's timestep and looks up the nearest float32 timestep (`argmin |timesteps - t|`,
   `schedulers/flow_match_pusa_v2v.py:56-57`, `flow_match_pusa.py:56`). From 60 steps up the
   schedule's spacing near 1000 is under one bf16 step (4) at some step, which then lands on its
   neighbour (60 steps: step 4, bf16 t = 984, is taken as step 5) and moves by the wrong sigmas;
   the steps no longer add up to 1 (by about 1e-4). We step on sigma_k, sigma_(k+1): the lookup
   only exists to recover k, which the loop knows. Below 60 steps, every count in the grid, both
   agree. Test: `test_from_60_steps_upstream_steps_with_a_neighbouring_sigma`.
2. **A conditioned frame whose truncated timestep is 0 stops moving** (`flow_match_pusa_v2v.py:
   74-77`): with m = 0 always (we agree), and with m > 0 once bf16(t_k) * m < 1. We keep it on
   m * sigma down to 0 (the DiT still sees t = 0). The freeze is a side effect of truncating t
   for the DiT; it concerns only m below 1 / t_min (0.0016 at 4 steps, 0.0028 at 10, 0.0068 at
   30) and moves that frame by at most m * sigma_k * |v|. Test:
   `test_a_small_multiplier_freezes_upstream_once_its_timestep_truncates_to_zero`.
3. **V2V position -1** (`pipelines/wan_video_pusa_v2v.py:433-437,503`): `latents[:, :, -1:0]`
   is empty, so the last latent is neither written nor noised, yet its timestep and step are
   scaled by m. Our plans resolve positions to 0..F-1 (`tasks.py`): -1 is the last latent, as
   in our manifests. Test: `test_upstream_v2v_ignores_a_last_latent_given_as_minus_one`.
4. **Multi-frames drops positions outside 0..F-1 silently** (`..._multi_frames.py:431`);
   `validate` refuses such a row, naming the column (`tests/test_tasks*.py`).
5. **Mochi runs the unconditional pass at guidance 1 too**
   (`pipelines_multi_frames_release.py:393-399`); we run the positive pass alone: half the DiT
   passes, a difference of rounding only (Mochi's g 1 columns in table 1).
6. **Mochi draws its noise from the global CUDA generator, in bf16**
   (`pipelines_multi_frames_release.py:334-336,417-421`); ours is float32 from a CPU generator
   seeded by the item's seed, so the same seed gives the same noise on any machine and in any
   batch. `numerics = "upstream"` rounds it to bf16.
7. **Mochi ti2v with a list of positions divides their sigma by 4** whatever the multipliers
   (`pipelines_ti2v_release.py:409-410,425-426`), and multi-frames uses 0.3 for a missing
   multiplier (`pipelines_multi_frames_release.py:413,429`). Every position of ours has its
   multiplier (the task's default when the row gives none); image sets take the multi-frames
   rule.
8. **Mochi at 1 step**: `linear_quadratic_schedule` divides by N // 2 = 0
   (`pipelines_multi_frames_release.py:59-60`); ours is sigmas 1, 0. Test:
   `test_our_schedules_are_the_references_bit_for_bit` (2..200 steps agree bit for bit).

Two former differences are gone: our shifted schedule is now computed in float32 as DiffSynth's
scheduler computes it (from float64 it differed in the last bit, which moved one DiT timestep
by one bf16 step at some step of 60 of the step counts 1..1000, the first at 84), and a
conditioned frame's timestep is multiplied by its multiplier itself, not by sigma_f / sigma_k
(which moved a bf16 tie such as 740 * 0.35 = 259 one bf16 step, at 190 of 1900 (steps 1..100
x 19 multipliers) combinations). Both are checked over 1..200 and 1..300 step counts.

Outside the loop, and so outside this comparison: prompt encoding, image and video
preprocessing, the VAE (ours runs in float32) and decoding. There:

9. **Framing** is data (`image_fit` / `video_fit`, a `fit` column; manifests/TASKS.md,
   "Framing"), and each real spec frames as its upstream script does: Wan2.1 multi-frames
   `native` (the size from the first image, rounded down to x16, plain resize;
   `wan_14b_multi_frames_pusa.py:60-76`), Wan2.2 multi-frames `contain` (fit inside, pasted on
   black, with upstream's `int()` arithmetic; `wan22_14b_multi_frames_pusa.py:69-85`), the v2v
   scripts `cover` (`wan_14b_v2v_pusa.py:10-54`). One difference is kept on purpose: our `cover`
   crops a fractional centre box before resizing, where upstream crops whole pixels. It keeps
   the fingerprints of items made before `fit` existed, and moves pixels by under one source
   pixel.
10. **VAE tiling** uses upstream's tile (30, 52) and stride (15, 26) latents in the real Wan
    specs (`wan_video_pusa*.py` `__call__` defaults, `tiled=True` in every script), so seams fall
    where upstream's do; the blend across a seam is diffusers' own, not DiffSynth's. A Mochi
    spec with `vae_tile_*` is refused rather than tiled (the Mochi scripts do not tile that way).
11. **LoRA merges** follow upstream's two loaders (`PusaV1/diffsynth/models/lora.py:205-277`
    for Pusa's, `model_manager.py:440-493` for LightX2V's: `alpha / rank`, the file's `.alpha`
    when present, `.diff*` keys skipped). Where upstream would silently merge part of a file
    (keys it cannot place), we refuse it, naming the keys.

## The option `deterministic`

`[options] deterministic = true` sets, when the pipeline loads (first thing in the family's
`build`, so in the worker process that will run it, before any weight reaches the GPU):

- `CUBLAS_WORKSPACE_CONFIG=:4096:8`, unless the environment already has a value (PyTorch reads
  it at its first cuBLAS call; if CUDA was already in use the load warns that it may be late:
  set it in the worker's environment then);
- `torch.use_deterministic_algorithms(True, warn_only=True)`: ops without a deterministic kernel
  warn in the worker log instead of failing the item;
- `torch.backends.cudnn.deterministic = True`, `torch.backends.cudnn.benchmark = False`.

Nothing is undone: the settings are process-wide and a worker keeps its pipeline for life. The
option is not part of the pipeline identity (like `attention`, it changes kernels, not the
computation). The default, `false`, touches none of these.

What holds on a GPU: on one machine, with the same GPU model, driver, CUDA, cuDNN, PyTorch and
diffusers, the same options and the same batch composition, a rerun of an item gives the same
bits. The noise (and Mochi's conditioning sample) never depend on the device: they come from CPU
generators. cuBLAS GEMMs run with a fixed workspace, and the VAE's cuDNN convolutions with
deterministic algorithms picked by heuristics, not by timing runs. Attention is left on SDPA's
fast backends (or flash-attn with `attention = "flash"`): PyTorch's list of operations that are
nondeterministic under `use_deterministic_algorithms` has no attention forward, and the known
nondeterminism of flash and memory-efficient attention (atomic adds) is in their backward
passes, which sampling never runs. Forcing SDPA's math backend is not an option at size (it
materialises the N x N attention matrix; N = 75,600 tokens at 1280x720x81).

What does not hold: bits across GPU models, driver, CUDA, cuDNN, cuBLAS, PyTorch or diffusers
versions (other kernels), between CPU and GPU, or across batch composition (`batched_cfg`,
`sample_batch` and micro-batch sizes change GEMM shapes and so their reduction order; the maths
is the same). An op without a deterministic kernel only warns. Deterministic kernels can be
slower, and with deterministic algorithms on PyTorch fills freshly allocated memory
(`torch.utils.deterministic.fill_uninitialized_memory`, on by default). None of this was
measured on a GPU in this work: the settings themselves are tested on the CPU
(`tests/test_upstream_reference_options.py`, in a child process).
"""


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    raise SystemExit(main())
