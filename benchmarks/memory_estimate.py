"""The activation estimate a worker refuses items with, against one measured forward (CPU, fp32).

Each size runs in a fresh subprocess: a random-weight Wan DiT (our `PusaWanTransformer`) is built,
then one forward runs; the figure is the growth of the peak RSS during the forward (`ru_maxrss`
after it minus the RSS just before it, weights and inputs already resident), as B3 measures it,
with glibc's mmap threshold fixed so RSS follows the live tensors. The estimate is
`pipelines.memory_fit.activation_bytes` at the same size, the doctor's figure.

    python benchmarks/memory_estimate.py

Prints one line per size (tokens, estimate, measured, measured / estimate) and the smallest ratio
among sizes of 4,096 tokens or more; `memory_fit.FIT_MARGIN` refuses an item only when half its
estimate does not fit, which is safe while that ratio stays above 1 / FIT_MARGIN.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import torch

# (dim, ffn_dim, layers, latent frames, latent height, latent width)
SIZES = [
    (256, 704, 2, 5, 16, 16),
    (256, 704, 2, 9, 32, 32),
    (512, 1382, 2, 21, 30, 52),
    (512, 1382, 2, 21, 60, 104),
    (1024, 2764, 1, 11, 60, 104),
]
LARGE = 4096  # tokens: below this, fixed costs dominate and no item is refused


def rss_bytes() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize()


def child(dim: int, ffn: int, layers: int, frames: int, h: int, w: int) -> None:
    from pusa_batch.models.wan import PusaWanTransformer, WanConfig
    from pusa_batch.pipelines.memory_fit import ItemSize, activation_bytes

    torch.set_grad_enabled(False)
    config = WanConfig(
        num_attention_heads=dim // 64,
        attention_head_dim=64,
        ffn_dim=ffn,
        num_layers=layers,
        text_dim=256,
    )
    model = PusaWanTransformer(config).eval()
    x = torch.randn(1, 16, frames, h, w)
    context = torch.randn(1, 32, 256)
    t = torch.full((1, frames), 900.0)
    before = rss_bytes()
    with torch.inference_mode():
        model(x, t, context)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    size = ItemSize(num_frames=4 * (frames - 1) + 1, height=8 * h, width=8 * w)
    estimate = activation_bytes(model, size, 4, 4)
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
            f"dim {size[0]} tokens {r['tokens']}: estimate {r['estimate'] / 2**20:.0f} MiB, "
            f"measured {r['measured'] / 2**20:.0f} MiB, measured/estimate {ratio:.2f}"
        )
    from pusa_batch.pipelines.memory_fit import FIT_MARGIN

    print(
        f"memory_estimate min_ratio_large={min(ratios):.2f} (safe above 1/FIT_MARGIN = "
        f"{1 / FIT_MARGIN:.2f})"
    )


if __name__ == "__main__":
    if len(sys.argv) > 1:
        child(*map(int, sys.argv[1:]))
    else:
        main()
