"""The activation estimate a worker refuses items with, against one measured forward (CPU, fp32).

Each size runs in a fresh subprocess: a random-weight DiT (our `PusaWanTransformer` or
`PusaMochiTransformer`) is built, then one forward runs; the figure is the growth of the peak RSS
during the forward (`ru_maxrss` after it minus the RSS just before it, weights and inputs already
resident), as B3 measures it, with glibc's mmap threshold fixed so RSS follows the live tensors.
The estimate is `pipelines.memory_fit.activation_bytes` at the same size, the doctor's figure.

    python benchmarks/memory_estimate.py

Prints one line per size (tokens, estimate, measured, measured / estimate) and the smallest and
largest ratio among sizes of 4,096 tokens or more; `memory_fit.FIT_MARGIN` refuses an item only
when half its estimate does not fit, which never refuses an item that fits while the smallest
ratio stays above 1 / FIT_MARGIN. A ratio above 1 is an estimate that runs low: refusals stay
safe, but an item that passes may still run out of memory.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys

import torch
from bench_common import rss_bytes

# (family, dim, layers, latent frames, latent height, latent width); Wan's ffn_dim is 2.7 x dim
SIZES = [
    ("wan", 256, 2, 5, 16, 16),
    ("wan", 256, 2, 9, 32, 32),
    ("wan", 512, 2, 21, 30, 52),
    ("wan", 512, 2, 21, 60, 104),
    ("wan", 1024, 1, 11, 60, 104),
    ("mochi", 512, 2, 14, 30, 52),
    ("mochi", 1024, 1, 11, 60, 104),
]
LARGE = 4096  # tokens: below this, fixed costs dominate and no item is refused


def build(family: str, dim: int, layers: int) -> torch.nn.Module:
    from pusa_batch.models.mochi import MochiConfig, PusaMochiTransformer
    from pusa_batch.models.wan import PusaWanTransformer, WanConfig

    if family == "mochi":
        config = MochiConfig(
            depth=layers,
            num_heads=dim // 64,
            hidden_size_x=dim,
            hidden_size_y=dim // 2,
            t5_feat_dim=256,
            t5_token_length=32,
        )
        return PusaMochiTransformer(config).eval()
    config = WanConfig(
        num_attention_heads=dim // 64,
        attention_head_dim=64,
        ffn_dim=int(dim * 2.7),
        num_layers=layers,
        text_dim=256,
    )
    return PusaWanTransformer(config).eval()


def child(family: str, dim: int, layers: int, frames: int, h: int, w: int) -> None:
    from pusa_batch.pipelines.memory_fit import ItemSize, activation_bytes

    torch.set_grad_enabled(False)
    model = build(family, dim, layers)
    mochi = family == "mochi"
    x = torch.randn(1, 12 if mochi else 16, frames, h, w)
    context = torch.randn(1, 32, 256)
    before = rss_bytes()
    with torch.inference_mode():
        if mochi:
            model(x, torch.full((1, frames), 0.9), context, torch.ones(1, 32, dtype=torch.bool))
        else:
            model(x, torch.full((1, frames), 900.0), context)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    factor = 6 if mochi else 4
    size = ItemSize(num_frames=factor * (frames - 1) + 1, height=8 * h, width=8 * w)
    estimate = activation_bytes(model, size, factor, 4)
    tokens = frames * (h // 2) * (w // 2)
    print(json.dumps({"tokens": tokens, "estimate": estimate, "measured": peak - before}))


def main() -> None:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1"}
    ratios = []
    for size in SIZES:
        done = subprocess.run(
            [sys.executable, __file__, *map(str, size)],
            check=True,
            env=env,
            capture_output=True,
            text=True,
        )
        r = json.loads(done.stdout.strip().splitlines()[-1])
        ratio = r["measured"] / r["estimate"]
        if r["tokens"] >= LARGE:
            ratios.append(ratio)
        print(
            f"{size[0]} dim {size[1]} tokens {r['tokens']}: "
            f"estimate {r['estimate'] / 2**20:.0f} MiB, "
            f"measured {r['measured'] / 2**20:.0f} MiB, measured/estimate {ratio:.2f}"
        )
    from pusa_batch.pipelines.memory_fit import FIT_MARGIN

    print(
        f"memory_estimate min_ratio_large={min(ratios):.2f} max_ratio_large={max(ratios):.2f} "
        f"(refusals safe while min > 1/FIT_MARGIN = {1 / FIT_MARGIN:.2f})"
    )


if __name__ == "__main__":
    if len(sys.argv) > 1:
        child(sys.argv[1], *map(int, sys.argv[2:]))
    else:
        main()
