"""B11 / B12: the speed options on the CPU: `compile = true` (B11) and TeaCache (B12).

B11: forwards of a mid-size random-weight Wan (dim 512, 8 blocks, 4 heads of 128, ffn 1384,
latents 3x16x16 = 192 tokens, a 64-token context, the first frame at t = 0) with every block
compiled (`PusaWanTransformer.compile_blocks()`, inductor) against the same weights eager, in
one process, alternating the two sides (3 forwards each) for `--rounds` rounds after a warm-up;
the compile itself is timed and printed, not gated. Figure: the median per-round ratio compiled
/ eager; target <= 1 (compiling must not cost time per forward). The max |difference| of the
outputs is printed.

B12: TeaCache (`models/teacache.py`, upstream's semantics) in full CFG sampling runs (two passes,
guidance 3, `--steps` steps, Pusa's shifted schedule), on the same mid-size model and on the tiny
twin's pipeline (`pipelines/tiny.toml`): the fraction of DiT forwards whose blocks were skipped,
the deviation of the final latents from full sampling (relative L2 and max |d| beside the
latents' max), and the wall time. The gated figure is the mid-size run's time with TeaCache at
`teacache_threshold = 0.2` (`Wan2.1-T2V-14B`) over the full run's, the median over
`--teacache-rounds` alternating rounds; target <= 0.5. Random time embeddings move the
modulation by about 60-75% per step, far outside the small distances upstream's polynomials were
fitted on (with real weights), where the T2V polynomials are negative (every middle step is
skipped) and the I2V ones large (none is, at thresholds below 10); a sweep with the I2V-720P
polynomial at thresholds of a few per-step values shows the accumulation in between.

    python benchmarks/b11_speed_options.py [--rounds 5] [--teacache-rounds 3] [--steps 16]

Prints `B11 compile_ratio=<x> target<=1 pass|miss` and `B12 teacache_time_ratio=<x> target<=0.5
pass|miss`, then the details. `--inject-slowdown S` adds S seconds to every compiled forward
(B11) and to every TeaCache forward (B12).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from bench_common import Target, add_slowdown_flag, load_average, result_line, slowdown

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pusa_batch import sampler  # noqa: E402
from pusa_batch.models.teacache import TeaCache  # noqa: E402
from pusa_batch.models.wan import PusaWanTransformer, WanConfig  # noqa: E402

COMPILE_TARGET = Target("<=", 1.0)
TEACACHE_TARGET = Target("<=", 0.5)
SPEC_PATH = Path(__file__).resolve().parents[1] / "pipelines" / "tiny.toml"
MID = {
    "patch_size": (1, 2, 2),
    "num_attention_heads": 4,
    "attention_head_dim": 128,
    "in_channels": 16,
    "out_channels": 16,
    "text_dim": 256,
    "freq_dim": 256,
    "ffn_dim": 1384,
    "num_layers": 8,
}
LATENTS = (1, 16, 3, 16, 16)
CONTEXT = (1, 64, 256)
THRESHOLD, MODEL = 0.2, "Wan2.1-T2V-14B"
FORWARDS = 3  # per B11 round and side


def mid_model() -> PusaWanTransformer:
    torch.manual_seed(0)
    return PusaWanTransformer(WanConfig.from_dict(MID)).eval().requires_grad_(False)


def inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(*LATENTS, generator=gen)
    pos, neg = torch.randn(*CONTEXT, generator=gen), torch.randn(*CONTEXT, generator=gen)
    return x, pos, neg, torch.tensor([[0.0, 937.0, 937.0]])


def alternate(a: Callable[[], float], b: Callable[[], float], rounds: int) -> list[float]:
    """Per-round b/a, the order flipping each round; each callable returns its seconds."""
    ratios = []
    for r in range(rounds):
        if r % 2:
            tb, ta = b(), a()
        else:
            ta, tb = a(), b()
        ratios.append(tb / ta)
    return ratios


def timed(fn: Callable[[], object], extra: float = 0.0) -> Callable[[], float]:
    def run() -> float:
        began = time.perf_counter()
        fn()
        if extra:
            time.sleep(extra)
        return time.perf_counter() - began

    return run


# ---------------------------------------------------------------------------------------- B11


def bench_compile(args: argparse.Namespace, slow: float) -> None:
    eager = mid_model()
    compiled = copy.deepcopy(eager).compile_blocks()
    x, pos, _, t = inputs()
    with torch.inference_mode():
        expected = eager(x, t, pos)
        began = time.perf_counter()
        got = compiled(x, t, pos)
        compile_s = time.perf_counter() - began
        eager(x, t, pos)  # warm-up
        compiled(x, t, pos)
        ratios = alternate(
            timed(lambda: [eager(x, t, pos) for _ in range(FORWARDS)]),
            timed(lambda: [compiled(x, t, pos) for _ in range(FORWARDS)], FORWARDS * slow),
            args.rounds,
        )
    diff = (got - expected).abs().max().item()
    print(f"B11 first compiled call (compiling): {compile_s:.1f} s")
    print(f"B11 outputs max_abs_diff={diff:.2e} (scale {expected.abs().max().item():.2f})")
    print(f"B11 per-round ratios: {' '.join(f'{r:.3f}' for r in ratios)}")
    if slow:
        print(f"B11 injected: {slow:g} s more in each compiled forward")
    print(result_line("B11", "compile_ratio", statistics.median(ratios), COMPILE_TARGET))


# ---------------------------------------------------------------------------------------- B12


@dataclasses.dataclass
class Sampled:
    latents: torch.Tensor
    seconds: float
    calls: int = 0
    skipped: int = 0


def sample_mid(
    model: PusaWanTransformer,
    steps: int,
    threshold: float = 0.0,
    teacache_model: str = MODEL,
    extra: float = 0.0,
) -> Sampled:
    """A CFG run (two passes, guidance 3), one TeaCache per branch as upstream keeps them."""
    x, pos, neg, _ = inputs()
    noise = sampler.make_noise(LATENTS, 0)
    scale = torch.tensor([0.0, 1.0, 1.0])  # the first frame held clean
    clean = x[:, :, :1]
    cond = sampler.ConditioningSpec((0,), clean, (0.0,))
    caches = {}
    if threshold > 0:
        caches = {id(c): TeaCache(steps, threshold, teacache_model) for c in (pos, neg)}

    def call(latents: torch.Tensor, sigma: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        t = sampler.wan_timesteps(sigma, multipliers=scale)
        if extra:
            time.sleep(extra)
        return model(latents, t, context, cache=caches.get(id(context)))

    began = time.perf_counter()
    with torch.inference_mode():
        out = sampler.sample(
            sampler.guided(call, pos, neg, 3.0), noise, sampler.shifted_sigmas(steps), cond
        )
    seconds = time.perf_counter() - began
    return Sampled(
        out,
        seconds,
        sum(c.calls for c in caches.values()),
        sum(c.skipped for c in caches.values()),
    )


def deviation(out: torch.Tensor, ref: torch.Tensor) -> str:
    rel = ((out - ref).norm() / ref.norm()).item()
    top = (out - ref).abs().max().item()
    return f"rel_l2={rel:.4f} max_abs={top:.4f} (latents max {ref.abs().max().item():.2f})"


def bench_teacache(args: argparse.Namespace, slow: float) -> None:
    model = mid_model()
    steps = args.steps
    full = sample_mid(model, steps)
    cached = sample_mid(model, steps, THRESHOLD)
    print(
        f"B12 mid-size (dim 512, 8 blocks, {steps} steps, CFG two passes), threshold "
        f"{THRESHOLD:g} {MODEL}: skipped {cached.skipped}/{cached.calls} forwards "
        f"({cached.skipped / cached.calls:.0%}); {deviation(cached.latents, full.latents)}"
    )
    for threshold in (2000.0, 5000.0, 10000.0):
        swept = sample_mid(model, steps, threshold, "Wan2.1-I2V-14B-720P")
        print(
            f"B12 mid-size sweep, Wan2.1-I2V-14B-720P at {threshold:g}: skipped "
            f"{swept.skipped}/{swept.calls}; {deviation(swept.latents, full.latents)}"
        )
    tiny_twin(steps)
    ratios = alternate(
        lambda: sample_mid(model, steps).seconds,
        lambda: sample_mid(model, steps, THRESHOLD, extra=slow).seconds,
        args.teacache_rounds,
    )
    print(f"B12 per-round ratios: {' '.join(f'{r:.3f}' for r in ratios)}")
    if slow:
        print(f"B12 injected: {slow:g} s more in each TeaCache forward")
    print(result_line("B12", "teacache_time_ratio", statistics.median(ratios), TEACACHE_TARGET))


def tiny_twin(steps: int) -> None:
    """The tiny twin's pipeline with the option set, as a user sets it."""
    from pusa_batch.item import Item
    from pusa_batch.pipelines import load_pipeline
    from pusa_batch.pipelines.spec import load_pipeline_spec

    spec = load_pipeline_spec(SPEC_PATH)
    pipe = load_pipeline(spec, device="cpu")
    d = spec.defaults
    item = Item(
        id="b12",
        row=1,
        task="t2v",
        prompt="a red car on a road",
        negative_prompt=d.negative_prompt,
        images=(),
        video=None,
        video_b=None,
        cond_frames=None,
        noise_multipliers=None,
        num_frames=d.num_frames,
        height=d.height,
        width=d.width,
        fps=d.fps,
        seed=0,
        steps=steps,
        guidance_scale=d.guidance_scale,
        shift=d.shift,
    )
    prepared = pipe.prepare(item)
    full = pipe.sample(prepared)
    options = dataclasses.replace(spec.options, teacache_threshold=THRESHOLD)
    pipe.spec = dataclasses.replace(spec, options=options)
    cached = pipe.sample(prepared)
    caches = pipe.teacache
    print(
        f"B12 tiny twin (tiny.toml, 17x64x64, {steps} steps, CFG two passes), threshold "
        f"{THRESHOLD:g} {MODEL}: skipped {caches.skipped}/{caches.calls} forwards; "
        f"{deviation(cached, full)}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--teacache-rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--no-compile", action="store_true", help="B12 only")
    add_slowdown_flag(parser, "S seconds more per compiled forward (B11) and TeaCache forward")
    args = parser.parse_args()
    slow = slowdown(args)
    print(f"B11/B12 load average at the start: {load_average()}; torch threads "
          f"{torch.get_num_threads()}")  # fmt: skip
    if not args.no_compile:
        bench_compile(args, slow)
    bench_teacache(args, slow)
    print(f"B11/B12 load average at the end: {load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
