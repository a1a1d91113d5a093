"""B2: our time per t2v item vs diffusers' `WanPipeline`, same tiny Wan2.1 weights, side by side.

Both pipelines load the same tiny twin folder (`ensure_tiny_model("wan2.1")`) in one process and
run the same prompt, negative prompt, steps, guidance, size, `max_sequence_length` (our
`text_max_length`) and seed. diffusers gets `FlowMatchEulerDiscreteScheduler(shift=5)` instead of
its default UniPC, so both make the same 2 x steps transformer calls (Euler flow matching, CFG in
two passes). After one warm-up each, the two run alternately (the order flips every round) and
the medians are compared:

- end to end: text encoding, noise, the denoising loop, VAE decode, frames out (ours uint8 from
  `Pipeline.generate`, theirs float `output_type="np"`). Every item has its own prompt, so our
  prompt cache only saves the negative prompt, as in a real batch.
- sampler only: the denoising loop alone, from the same noise and text embeddings
  (`Pipeline.sample` vs `WanPipeline(prompt_embeds=..., latents=..., output_type="latent")`).

Each figure is median(ours) / median(diffusers) over the timed rounds, wall clock; the range of
the per-round ratios (the two calls of a round ran back to back) shows how noisy the machine
was, and process CPU times are printed beside.

The gated figure is the sampler-only ratio, one `B2` result line for the tiny default size and
one for a larger size: the denoising loop is the part where the two implementations differ.
End to end, over 90% of either side's time is the VAE decode, the same diffusers class in both,
so that ratio sits at 1 and moves with the machine's noise; it is printed, not gated.
Numerics: with the same noise and embeddings, diffusers' stock Euler schedule differs from Pusa's
(before the shift, N points from 1 down to about 0.005 vs Pusa's N+1 from 1 to 0) and it feeds
float timesteps where Pusa truncates and rounds them to bf16; a diffusers scheduler given Pusa's
sigmas and timesteps isolates everything else.

    python benchmarks/b2_vs_diffusers.py [--repeats 15] [--large 33x128x128] [--large-repeats 5]

Prints `B2 sampler_time_ratio_ours_over_diffusers=<x> target<=1 pass|miss` (tiny default size),
the same with a `_<size>` suffix for the larger size, and the absolute ms. `--inject-slowdown S`
adds S seconds to each of our timed calls.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from bench_common import Target, add_slowdown_flag, result_line, slowdown

from pusa_batch import sampler
from pusa_batch.item import Item
from pusa_batch.models.tiny import ensure_tiny_model
from pusa_batch.pipelines import load_pipeline
from pusa_batch.pipelines.base import Pipeline
from pusa_batch.pipelines.spec import load_pipeline_spec

TARGET = Target("<=", 1.0)
SPEC_PATH = Path(__file__).resolve().parents[1] / "pipelines" / "tiny.toml"
PROMPTS = (
    "a red car on a road at sunset",
    "a dog running on the beach",
    "aerial view of a city at night",
    "a boat on a lake in the fog",
    "a girl riding a bicycle in the park",
    "snow falling on a forest",
)


@dataclass(frozen=True)
class Size:
    frames: int
    height: int
    width: int

    def __str__(self) -> str:
        return f"{self.frames}x{self.height}x{self.width}"


def parse_size(text: str) -> Size:
    try:
        frames, height, width = (int(v) for v in text.lower().split("x"))
    except ValueError as e:
        raise argparse.ArgumentTypeError(
            f"size {text!r}: write FRAMESxHEIGHTxWIDTH, e.g. 33x128x128"
        ) from e
    return Size(frames, height, width)


def make_item(spec, size: Size, n: int) -> Item:
    d = spec.defaults
    return Item(
        id=f"b2-{n}",
        row=n + 1,
        task="t2v",
        prompt=f"{PROMPTS[n % len(PROMPTS)]} {n}",
        negative_prompt=d.negative_prompt,
        images=(),
        video=None,
        video_b=None,
        cond_frames=None,
        noise_multipliers=None,
        num_frames=size.frames,
        height=size.height,
        width=size.width,
        fps=d.fps,
        seed=n,
        steps=d.steps,
        guidance_scale=d.guidance_scale,
        shift=d.shift,
    )


def diffusers_transformer(folder: Path):
    """diffusers' own `WanTransformer3DModel` from the folder, without `accelerate`.

    `ModelMixin.from_pretrained` (diffusers 0.42) refuses classes with `_keep_in_fp32_modules`,
    as Wan's transformer has, unless `low_cpu_mem_usage`, which needs `accelerate`; without it,
    it raises "`low_cpu_mem_usage` cannot be False when `keep_in_fp32_modules` is True". The same
    class is built from the folder's config and given the folder's weights, strictly.
    """
    from diffusers import WanTransformer3DModel
    from safetensors.torch import load_file

    sub = folder / "transformer"
    model = WanTransformer3DModel.from_config(WanTransformer3DModel.load_config(str(sub)))
    model.load_state_dict(load_file(sub / "diffusion_pytorch_model.safetensors"), strict=True)
    return model.eval()


def load_diffusers(folder: Path, shift: float, scheduler=None):
    from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline
    from diffusers.utils import is_accelerate_available

    scheduler = scheduler or FlowMatchEulerDiscreteScheduler(shift=shift)
    extra = {} if is_accelerate_available() else {"transformer": diffusers_transformer(folder)}
    pipe = WanPipeline.from_pretrained(
        str(folder), scheduler=scheduler, dtype=torch.float32, **extra
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def pusa_scheduler(shift: float):
    """diffusers' Euler scheduler made to follow Pusa's sigmas and quantised DiT timesteps."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    class PusaEuler(FlowMatchEulerDiscreteScheduler):
        def set_timesteps(self, num_inference_steps=None, device=None, **kwargs):
            super().set_timesteps(num_inference_steps, device=device)
            sigmas = sampler.shifted_sigmas(num_inference_steps, shift)
            self.sigmas = sigmas.to(device)
            self.timesteps = sampler.wan_timesteps(sigmas[:-1]).to(device)

    return PusaEuler(shift=shift)


def diffusers_call(pipe, item: Item, text_max_length: int, **kwargs):
    return pipe(
        height=item.height,
        width=item.width,
        num_frames=item.num_frames,
        num_inference_steps=item.steps,
        guidance_scale=item.guidance_scale,
        max_sequence_length=text_max_length,
        **kwargs,
    ).frames


def timed(fn: Callable[[int], object], n: int) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of `fn(n)`."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn(n)
    return time.perf_counter() - wall, time.process_time() - cpu


@dataclass(frozen=True)
class Timings:
    """(wall, CPU) seconds per timed round, ours and theirs; round n ran both on item n."""

    ours: tuple[tuple[float, float], ...]
    theirs: tuple[tuple[float, float], ...]

    def median_ms(self, side: str, kind: int) -> float:
        return statistics.median(t[kind] for t in getattr(self, side)) * 1e3

    def paired(self, kind: int) -> list[float]:
        """Per-round ratios ours / theirs: each pair ran back to back, under the same load."""
        return sorted(o[kind] / t[kind] for o, t in zip(self.ours, self.theirs, strict=True))


WALL, CPU = 0, 1


def interleaved(ours: Callable[[int], object], theirs: Callable[[int], object], repeats: int):
    """Time both on items 1..repeats after one warm-up each; the order flips every round."""
    ours(0)
    theirs(0)
    times: dict[str, list[tuple[float, float]]] = {"ours": [], "theirs": []}
    for n in range(1, repeats + 1):
        pair = [("ours", ours), ("theirs", theirs)]
        for name, fn in pair if n % 2 else pair[::-1]:
            times[name].append(timed(fn, n))
    return Timings(tuple(times["ours"]), tuple(times["theirs"]))


def measure(
    ours: Pipeline, theirs, size: Size, repeats: int, slow: float = 0.0
) -> dict[str, Timings]:
    spec, max_len = ours.spec, ours.spec.options.text_max_length

    def ours_e2e(n: int):
        time.sleep(slow)
        return ours.generate(make_item(spec, size, n))

    def ours_loop(n: int):
        time.sleep(slow)
        return ours.sample(prepared[n])

    def theirs_e2e(n: int):
        item = make_item(spec, size, n)
        gen = torch.Generator("cpu").manual_seed(item.seed)
        return diffusers_call(
            theirs,
            item,
            max_len,
            prompt=item.prompt,
            negative_prompt=item.negative_prompt,
            generator=gen,
            output_type="np",
        )

    prepared = {n: ours.prepare(make_item(spec, size, n)) for n in range(repeats + 1)}

    def theirs_loop(n: int):
        p = prepared[n]
        return diffusers_call(
            theirs,
            make_item(spec, size, n),
            max_len,
            prompt_embeds=p.positive,
            negative_prompt_embeds=p.negative,
            latents=p.noise,
            output_type="latent",
        )

    return {
        "end to end": interleaved(ours_e2e, theirs_e2e, repeats),
        "sampler only": interleaved(ours_loop, theirs_loop, repeats),
    }


def numerics(ours: Pipeline, folder: Path, size: Size) -> dict[str, float]:
    """Max-abs differences for one item from the same noise (and, for the loop, embeddings)."""
    spec, max_len = ours.spec, ours.spec.options.text_max_length
    item = make_item(spec, size, 0)
    p = ours.prepare(item)
    our_latents = ours.sample(p)
    our_frames = ours.decode(our_latents).astype(np.float64)
    out: dict[str, float] = {}
    shift = spec.defaults.shift
    stock = load_diffusers(folder, shift)
    pos, neg = stock.encode_prompt(
        item.prompt, item.negative_prompt, max_sequence_length=max_len, device="cpu"
    )
    out["prompt_embeds"] = max(
        (pos - p.positive).abs().max().item(), (neg - p.negative).abs().max().item()
    )
    aligned = load_diffusers(folder, shift, pusa_scheduler(shift))
    for name, pipe in (("stock", stock), ("aligned", aligned)):
        latents = diffusers_call(
            pipe,
            item,
            max_len,
            prompt_embeds=p.positive,
            negative_prompt_embeds=p.negative,
            latents=p.noise,
            output_type="latent",
        )
        out[f"{name}_latents"] = (latents - our_latents).abs().max().item()
        out["latent_scale"] = our_latents.abs().max().item()
        if name == "aligned":
            frames = diffusers_call(
                pipe,
                item,
                max_len,
                prompt=item.prompt,
                negative_prompt=item.negative_prompt,
                latents=p.noise,
                output_type="np",
            )[0]
            their_frames = np.round(np.asarray(frames, dtype=np.float64) * 255.0)
            out["aligned_frames_uint8"] = float(np.abs(their_frames - our_frames).max())
    return out


def report(size: Size, parts: dict[str, Timings]) -> float:
    """Print one size's figures; return its sampler-only wall-clock ratio of medians."""
    for label, t in parts.items():
        wall, cpu = t.paired(WALL), t.paired(CPU)
        ratio = t.median_ms("ours", WALL) / t.median_ms("theirs", WALL)
        cpu_ratio = t.median_ms("ours", CPU) / t.median_ms("theirs", CPU)
        print(
            f"  {size} {label}: ours {t.median_ms('ours', WALL):.0f} ms, diffusers "
            f"{t.median_ms('theirs', WALL):.0f} ms, ratio {ratio:.3f} (rounds "
            f"{wall[0]:.2f}..{wall[-1]:.2f}); CPU time {t.median_ms('ours', CPU):.0f} / "
            f"{t.median_ms('theirs', CPU):.0f} ms, ratio {cpu_ratio:.3f} (rounds "
            f"{cpu[0]:.2f}..{cpu[-1]:.2f})"
        )
    loop = parts["sampler only"]
    return loop.median_ms("ours", WALL) / loop.median_ms("theirs", WALL)


def quiet_libraries() -> None:
    """No progress bars or loading advice from diffusers / transformers in the report."""
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15, help="timed rounds, tiny default size")
    parser.add_argument("--large-repeats", type=int, default=5, help="timed rounds, larger size")
    parser.add_argument("--large", type=parse_size, default=Size(33, 128, 128))
    parser.add_argument("--no-large", action="store_true", help="the tiny default size only")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    add_slowdown_flag(parser, "S seconds more in each of our timed calls")
    args = parser.parse_args()
    slow = slowdown(args)

    torch.set_num_threads(args.threads)
    quiet_libraries()
    torch.set_grad_enabled(False)
    spec = load_pipeline_spec(SPEC_PATH)
    folder = ensure_tiny_model("wan2.1")
    ours = load_pipeline(spec, device="cpu")
    theirs = load_diffusers(folder, spec.defaults.shift)
    d = spec.defaults
    sizes = [Size(d.num_frames, d.height, d.width)]
    if not args.no_large:
        sizes.append(args.large)
    print(
        f"B2 config: tiny Wan2.1 twin, t2v, steps={d.steps} guidance={d.guidance_scale} "
        f"shift={d.shift} text_max_length={spec.options.text_max_length} "
        f"threads={args.threads} rounds={args.repeats} (larger size {args.large_repeats}); "
        "ratio = median(ours) / median(diffusers) after one warm-up each, "
        "rounds = range of the per-round ratios; gated: sampler only (end to end is mostly the "
        "same VAE decode on both sides)"
    )
    ratios = {}
    for size, repeats in zip(sizes, (args.repeats, args.large_repeats), strict=False):
        ratios[size] = report(size, measure(ours, theirs, size, repeats, slow))
    num = numerics(ours, folder, sizes[0])
    print(
        f"  numerics at {sizes[0]}, same noise: prompt embeddings max|d|="
        f"{num['prompt_embeds']:.2e}; final latents (max |x| {num['latent_scale']:.2f}) "
        f"vs stock Euler max|d|={num['stock_latents']:.2e}, vs Euler on Pusa's sigmas and "
        f"timesteps max|d|={num['aligned_latents']:.2e}; uint8 frames (aligned) "
        f"max|d|={num['aligned_frames_uint8']:.0f}"
    )
    if slow:
        print(f"B2 injected: {slow:g} s more in each of our timed calls")
    for n, (size, ratio) in enumerate(ratios.items()):
        name = "sampler_time_ratio_ours_over_diffusers" + ("" if n == 0 else f"_{size}")
        print(result_line("B2", name, ratio, TARGET))


if __name__ == "__main__":
    main()
