"""GPU step time of the real Wan2.1-14B transformer: ours vs diffusers, and each speed option.

Builds the Wan2.1-T2V-14B transformer config (dim 5120, 40 layers, 40 heads, ffn 13824,
text_dim 4096, 16 in/out channels, patch (1, 2, 2)) with random bf16 weights made directly on the
GPU (no download), and times DiT forwards at 832x480x81 and 1280x720x81 (latents 21x60x104 and
21x90x160; 32,760 and 75,600 tokens), the first latent frame held clean (t = 0) and the others at
t = 937, as Pusa's I2V steps are, with a 512-token text context:

- ours (`PusaWanTransformer`, frame-level modulation), CFG in two passes (two batch-1 forwards a
  step) and batched (one batch-2 forward), sdpa, and flash / sage where installed;
- TeaCache: the time of a skipped forward (embedding, residual add, head) beside a full one, and
  the s/step at the skip fraction these random weights give over a `--teacache-steps` schedule at
  `--teacache-threshold` (the decision depends only on the timestep modulation, so it is known
  without running the blocks): s/step = 2 x ((1 - s) x full + s x skipped). The time embedding
  is random too, so that fraction is not the real model's (see BENCHMARKS.md, B12);
- `compile_blocks()` (torch.compile, inductor) on our blocks, two passes;
- diffusers' `WanTransformer3DModel` with the timesteps expanded to every token (Pusa's original
  per-token path), same config, its own random weights, two passes (built after ours is freed,
  so the script also fits an 80 GB GPU).

Each row: s/step (median over the timed forwards), peak memory (torch.cuda.max_memory_allocated,
weights included, since the row's start), and MFU against the GPU's dense bf16 peak (`PEAKS`, by
device name; n/a for others). FLOPs per forward are counted from the config (`forward_flops`):
per block, 2 FLOPs per multiply-add of the self-attention q/k/v/o projections (4 x 2ND^2), the
self-attention scores and values (2 x 2N^2 D), cross-attention q/o on the video tokens
(2 x 2ND^2) and k/v on the text (2 x 2LD^2), its scores and values (2 x 2NLD) and the FFN
(2 x 2NDF); plus the patch embedding, the text embedder and the head. At 720p x 81 that is
6.52 PFLOP per forward (1.68 at 480p); the common estimate 2 x params x tokens + attention
(6.81, the issue's "about 6.9") also counts the cross-attention k/v as if they ran on the video
tokens.

    python benchmarks/gpu_step.py --out gpu_step.md [--quick] [--sizes 480p 720p] [--skip X]
    python benchmarks/gpu_step.py --device cpu --tiny --out /tmp/t.md   # the code path, on a CPU

Without a CUDA GPU (and without `--device cpu`) it prints why it skips and exits 0. It is not in
`run_all` (which runs on CPUs); the whole default run is sized for one 10-minute command on an
H100/H200 and stops starting new rows after `--budget-s`, writing what it has.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.util
import math
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pusa_batch import sampler  # noqa: E402
from pusa_batch.models.teacache import TeaCache  # noqa: E402
from pusa_batch.models.wan import FP32_MODULES, PusaWanTransformer, WanConfig  # noqa: E402

WAN14B = {
    "patch_size": (1, 2, 2),
    "num_attention_heads": 40,
    "attention_head_dim": 128,
    "in_channels": 16,
    "out_channels": 16,
    "text_dim": 4096,
    "freq_dim": 256,
    "ffn_dim": 13824,
    "num_layers": 40,
}
TINY = {
    **WAN14B,
    "num_attention_heads": 2,
    "attention_head_dim": 16,
    "text_dim": 32,
    "freq_dim": 32,
    "ffn_dim": 64,
    "num_layers": 2,
    "rope_max_seq_len": 64,
}
# name: (pixels, latent frames, height, width)
SIZES = {"480p": ("832x480x81", 21, 60, 104), "720p": ("1280x720x81", 21, 90, 160)}
TINY_SIZES = {"480p": ("tiny 48x64x9", 3, 6, 8), "720p": ("tiny 64x96x9", 3, 8, 12)}
TEXT_TOKENS = 512
# Dense bf16 tensor-core peaks, TFLOPS, by a substring of torch.cuda.get_device_name (first match).
PEAKS = (
    ("H200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.0),  # SXM
    ("A100", 312.0),
    ("L40S", 362.0),
)
VARIANTS = ("sdpa", "batched", "flash", "sage", "teacache", "compile", "diffusers")


def forward_flops(cfg: WanConfig, grid: tuple[int, int, int], batch: int = 1) -> float:
    """FLOPs of one forward (2 per multiply-add), the formula in the module docstring."""
    n, d, f, lt = math.prod(grid), cfg.inner_dim, cfg.ffn_dim, TEXT_TOKENS
    block = 4 * 2 * n * d * d + 2 * 2 * n * n * d  # self-attention
    block += 2 * 2 * n * d * d + 2 * 2 * lt * d * d + 2 * 2 * n * lt * d  # cross-attention
    block += 2 * 2 * n * d * f  # FFN
    patch = math.prod(cfg.patch_size)
    outer = 2 * n * cfg.in_channels * patch * d + 2 * n * d * cfg.out_channels * patch
    outer += 2 * lt * (cfg.text_dim * d + d * d)
    return batch * (cfg.num_layers * block + outer)


def rule_of_thumb_flops(cfg: WanConfig, grid: tuple[int, int, int]) -> float:
    """2 x block parameters x tokens + attention scores/values: the usual estimate."""
    n, d = math.prod(grid), cfg.inner_dim
    params = cfg.num_layers * (8 * d * d + 2 * d * cfg.ffn_dim)
    return 2 * params * n + cfg.num_layers * 4 * n * n * d


def flops_text(flops: float) -> str:
    return f"{flops / 1e15:.3f} PFLOP" if flops >= 1e12 else f"{flops / 1e9:.3f} GFLOP"


def peak_tflops(name: str) -> float | None:
    for key, value in PEAKS:
        if key in name:
            return value
    return None


@dataclass
class Row:
    size: str
    variant: str
    s_per_step: float | None = None
    peak_gib: float | None = None
    mfu: float | None = None
    note: str = ""
    flops: float | None = None  # per step, for the MFU


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


class Bench:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.device = torch.device(args.device)
        self.cuda = self.device.type == "cuda"
        self.dtype = torch.bfloat16 if self.cuda else torch.float32
        self.config = WanConfig.from_dict(dict(TINY if args.tiny else WAN14B))
        self.sizes = {k: (TINY_SIZES if args.tiny else SIZES)[k] for k in args.sizes}
        cpu = platform.processor() or platform.machine()
        self.name = torch.cuda.get_device_name(self.device) if self.cuda else f"CPU {cpu}"
        self.peak = peak_tflops(self.name) if self.cuda else None
        self.rows: list[Row] = []
        self.full_forward: dict[str, float] = {}  # size: s per batch-1 forward (the sdpa row)
        self.began = time.perf_counter()

    # -------------------------------------------------------------------------------- helpers

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def reset_peak(self) -> None:
        if self.cuda:
            gc.collect()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak_gib(self) -> float | None:
        return torch.cuda.max_memory_allocated(self.device) / 2**30 if self.cuda else None

    def time_calls(self, fn: Callable[[], object]) -> float:
        """Median seconds of one call after the warm-up calls."""
        for _ in range(self.args.warmup):
            fn()
        self.sync()
        times = []
        for _ in range(self.args.repeats):
            began = time.perf_counter()
            fn()
            self.sync()
            times.append(time.perf_counter() - began)
        return statistics.median(times)

    def out_of_time(self) -> bool:
        return time.perf_counter() - self.began > self.args.budget_s

    def inputs(self, size: str, batch: int = 1) -> tuple[torch.Tensor, ...]:
        _, f, h, w = self.sizes[size]
        gen = torch.Generator(self.device).manual_seed(0)
        x = torch.randn(batch, 16, f, h, w, generator=gen, device=self.device, dtype=self.dtype)
        ctx = torch.randn(
            batch, TEXT_TOKENS, self.config.text_dim, generator=gen, device=self.device
        ).to(self.dtype)
        t = torch.full((batch, f), 937.0, device=self.device)
        t[:, 0] = 0.0  # a clean first frame, as Pusa's I2V holds it
        return x, t, ctx

    def grid(self, size: str) -> tuple[int, int, int]:
        _, f, h, w = self.sizes[size]
        pt, ph, pw = self.config.patch_size
        return f // pt, h // ph, w // pw

    def add(self, row: Row) -> None:
        if row.s_per_step and row.flops and self.peak:
            row.mfu = row.flops / row.s_per_step / (self.peak * 1e12)
        self.rows.append(row)
        shown = f"{row.s_per_step:.3f} s/step" if row.s_per_step is not None else "-"
        print(f"  {row.size} {row.variant}: {shown} {row.note}", flush=True)
        self.write()

    def run_row(self, size: str, variant: str, measure: Callable[[], Row]) -> None:
        if variant in self.args.skip:
            return
        if self.out_of_time():
            self.add(Row(size, variant, note=f"not run: past --budget-s {self.args.budget_s:g}"))
            return
        self.reset_peak()
        try:
            row = measure()
        except torch.cuda.OutOfMemoryError as e:
            row = Row(size, variant, note=f"out of memory: {str(e).splitlines()[0][:80]}")
        except Exception as e:  # a row's failure is reported, the others still run
            row = Row(size, variant, note=f"failed: {type(e).__name__}: {str(e)[:100]}")
        if row.peak_gib is None and row.s_per_step is not None:
            row.peak_gib = self.peak_gib()
        self.add(row)

    # -------------------------------------------------------------------------------- models

    def ours(self, attention: str = "sdpa") -> PusaWanTransformer:
        with self.device, default_dtype(self.dtype):
            model = PusaWanTransformer(self.config, attention=attention)
        return model.set_dtype(self.dtype).eval().requires_grad_(False)

    def diffusers_model(self) -> torch.nn.Module:
        from diffusers import WanTransformer3DModel

        config = {k: v for k, v in self.config.to_dict().items() if not k.startswith("_")}
        with self.device, default_dtype(self.dtype):
            model = WanTransformer3DModel(**config)
        # What diffusers' from_pretrained keeps in fp32 (`_keep_in_fp32_modules`), as ours does.
        for name, param in model.named_parameters():
            if set(name.split(".")) & set(FP32_MODULES):
                param.data = param.data.float()
        return model.eval().requires_grad_(False)

    # -------------------------------------------------------------------------------- rows

    def two_pass(self, model: PusaWanTransformer, size: str, variant: str) -> Row:
        x, t, ctx = self.inputs(size)
        with torch.inference_mode():
            seconds = self.time_calls(lambda: model(x, t, ctx))
        if variant == "sdpa":
            self.full_forward[size] = seconds
        flops = 2 * forward_flops(self.config, self.grid(size))
        return Row(size, variant, 2 * seconds, note="CFG two passes", flops=flops)

    def batched(self, model: PusaWanTransformer, size: str) -> Row:
        x, t, ctx = self.inputs(size, batch=2)
        with torch.inference_mode():
            seconds = self.time_calls(lambda: model(x, t, ctx))
        flops = forward_flops(self.config, self.grid(size), 2)
        return Row(size, "batched", seconds, note="CFG in one batch-2 forward", flops=flops)

    def teacache(self, model: PusaWanTransformer, size: str) -> Row:
        x, t, ctx = self.inputs(size)
        args = self.args
        with torch.inference_mode():
            full = self.full_forward.get(size) or self.time_calls(lambda: model(x, t, ctx))
            # A huge threshold: the first call fills the residual, every later one skips.
            cache = TeaCache(10**9, 1e9, args.teacache_model)
            model(x, t, ctx, cache=cache)
            skipped = self.time_calls(lambda: model(x, t, ctx, cache=cache))
            fraction = self.skip_fraction(model, t)
        per_forward = (1 - fraction) * full + fraction * skipped
        note = (
            f"est.: skipped forward {skipped:.4f} s vs full {full:.3f} s; these random weights "
            f"skip {fraction:.0%} of {args.teacache_steps} steps at threshold "
            f"{args.teacache_threshold:g} ({args.teacache_model})"
        )
        return Row(size, "teacache", 2 * per_forward, note=note)

    def skip_fraction(self, model: PusaWanTransformer, t_frames: torch.Tensor) -> float:
        """TeaCache's decisions over a real schedule, from the modulation alone."""
        steps = self.args.teacache_steps
        cache = TeaCache(steps, self.args.teacache_threshold, self.args.teacache_model)
        sigmas = sampler.shifted_sigmas(steps, 5.0)
        scale = (t_frames[:1] > 0).float().cpu()  # the clean first frame stays at t = 0
        like = torch.empty(0, device=self.device, dtype=self.dtype)
        skipped = 0
        for k in range(steps):
            t = sampler.wan_timesteps(sigmas[k] * scale, multipliers=scale[0]).to(self.device)
            _, mod = model.frame_modulation(t, t.shape[1], like)
            skipped += not cache.should_compute(mod)
        return skipped / steps

    def per_token(self, model: torch.nn.Module, size: str) -> Row:
        x, t, ctx = self.inputs(size)
        grid = self.grid(size)
        t_tokens = t.repeat_interleave(grid[1] * grid[2], dim=1)  # (1, N), Pusa's original feed
        with torch.inference_mode():
            seconds = self.time_calls(lambda: model(x, t_tokens, ctx, return_dict=False))
        flops = 2 * forward_flops(self.config, grid)
        return Row(
            size, "diffusers", 2 * seconds, note="per-token timesteps, two passes", flops=flops
        )

    # -------------------------------------------------------------------------------- run

    def run(self) -> None:
        print(f"gpu_step on {self.name} ({self.device}), {len(self.sizes)} sizes", flush=True)
        self.our_rows(self.ours())  # ours is freed before diffusers' model is built
        self.reset_peak()
        if "diffusers" not in self.args.skip and not self.out_of_time():
            theirs = self.diffusers_model()
            for size in self.sizes:
                self.run_row(size, "diffusers", lambda s=size: self.per_token(theirs, s))
        self.write(final=True)

    def our_rows(self, model: PusaWanTransformer) -> None:
        for size in self.sizes:
            self.run_row(size, "sdpa", lambda s=size: self.two_pass(model, s, "sdpa"))
            self.run_row(size, "batched", lambda s=size: self.batched(model, s))
            for backend in ("flash", "sage"):
                self.run_row(
                    size, backend, lambda s=size, b=backend: self.other_kernel(model, s, b)
                )
            self.run_row(size, "teacache", lambda s=size: self.teacache(model, s))
        if "compile" not in self.args.skip:
            model.compile_blocks(backend=self.args.compile_backend)
            for size in self.sizes:
                self.run_row(size, "compile", lambda s=size: self.compiled(model, s))

    def compiled(self, model: PusaWanTransformer, size: str) -> Row:
        began = time.perf_counter()
        x, t, ctx = self.inputs(size)
        with torch.inference_mode():
            model(x, t, ctx)  # compiles (or recompiles for this shape)
        self.sync()
        first = time.perf_counter() - began
        row = self.two_pass(model, size, "compile")
        row.note = (
            f"CFG two passes; first call (compiling) {first:.0f} s, {self.args.compile_backend}"
        )
        return row

    def other_kernel(self, model: PusaWanTransformer, size: str, backend: str) -> Row:
        module = {"flash": "flash_attn", "sage": "sageattention"}[backend]
        if importlib.util.find_spec(module) is None:
            return Row(size, backend, note=f"not run: {module} not installed")
        if not self.cuda:
            return Row(size, backend, note="not run: a CUDA kernel")
        for block in model.blocks:
            block.attn1.backend = block.attn2.backend = backend
        try:
            return self.two_pass(model, size, backend)
        finally:
            for block in model.blocks:
                block.attn1.backend = block.attn2.backend = "sdpa"

    def write(self, final: bool = False) -> None:
        if self.args.out is None:
            return
        self.args.out.write_text(self.markdown(final))

    def markdown(self, final: bool = False) -> str:
        cfg = self.config
        lines = [
            f"# gpu_step: {self.name}",
            "",
            f"- device: {self.name} ({self.device}); torch {torch.__version__}"
            + (f", CUDA {torch.version.cuda}" if self.cuda else ""),
            f"- model: {'tiny twin' if self.args.tiny else 'Wan2.1-T2V-14B'} config (dim "
            f"{cfg.inner_dim}, {cfg.num_layers} layers, {cfg.num_attention_heads} heads, ffn "
            f"{cfg.ffn_dim}), random {str(self.dtype).removeprefix('torch.')} weights",
            f"- timing: {self.args.warmup} warm-up + {self.args.repeats} timed forwards per row "
            f"(median); peak bf16 {self.peak:g} TFLOPS"
            if self.peak
            else f"- timing: {self.args.warmup} warm-up + {self.args.repeats} timed forwards per "
            "row (median); MFU n/a (no known peak for this device)",
            f"- date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC"
            + ("" if final else " (partial: still running)"),
        ]
        for size, (label, *_) in self.sizes.items():
            grid = self.grid(size)
            lines.append(
                f"- {size} = {label}: {math.prod(grid):,} tokens, "
                f"{flops_text(forward_flops(cfg, grid))} per forward (rule of thumb "
                f"{flops_text(rule_of_thumb_flops(cfg, grid))})"
            )
        lines += [
            "",
            "| size | variant | s/step | peak GiB | MFU | note |",
            "|---|---|---|---|---|---|",
        ]
        for r in self.rows:
            step = f"{r.s_per_step:.3f}" if r.s_per_step is not None else "-"
            peak = f"{r.peak_gib:.1f}" if r.peak_gib is not None else "n/a"
            mfu = f"{r.mfu:.1%}" if r.mfu is not None else "n/a"
            lines.append(f"| {r.size} | {r.variant} | {step} | {peak} | {mfu} | {r.note} |")
        return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto (CUDA or skip), cuda, cuda:N, cpu")
    parser.add_argument("--tiny", action="store_true", help="the tiny twin's config and sizes")
    parser.add_argument("--quick", action="store_true", help="1 warm-up + 1 timed forward a row")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--sizes", nargs="+", choices=tuple(SIZES), default=list(SIZES))
    parser.add_argument("--skip", nargs="*", choices=VARIANTS, default=[], help="rows to leave out")
    parser.add_argument("--compile-backend", default="inductor")
    parser.add_argument("--teacache-threshold", type=float, default=0.2)
    parser.add_argument("--teacache-model", default="Wan2.1-T2V-14B")
    parser.add_argument("--teacache-steps", type=int, default=30)
    parser.add_argument(
        "--budget-s", type=float, default=420, help="start no row after this many seconds"
    )
    parser.add_argument("--out", type=Path, default=None, help="write the Markdown table here")
    args = parser.parse_args(argv)
    if args.quick:
        args.warmup, args.repeats = 1, 1
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device == "auto":
        if not torch.cuda.is_available():
            print(
                "gpu_step: SKIP: no CUDA GPU here (torch.cuda.is_available() is False, torch "
                f"{torch.__version__}); run it on a GPU machine, or pass --device cpu --tiny to "
                "exercise the code on a CPU"
            )
            return 0
        args.device = "cuda"
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"gpu_step: SKIP: --device {args.device} but no CUDA GPU is available")
        return 0
    torch.manual_seed(0)
    bench = Bench(args)
    bench.run()
    print(bench.markdown(final=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
