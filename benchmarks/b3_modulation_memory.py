"""B3: peak memory of one forward, frame-level modulation (ours) vs diffusers' per-token path.

Each model runs in a fresh subprocess with the same seeded weights and inputs. The figure is the
growth of the peak RSS during the forward: `ru_maxrss` after it minus the RSS just before it
(weights and inputs already resident), so it counts activations and modulation tensors only.
diffusers gets the per-frame timesteps expanded to every token, `timestep` of shape (B, seq_len),
which is how Pusa's original code feeds Wan. Both children run with a fixed glibc mmap threshold
(MALLOC_MMAP_THRESHOLD_=65536) so every large tensor is mapped and unmapped on its own and RSS
follows the live tensors; with glibc's adaptive threshold the same run varied by 1.5x.

    python benchmarks/b3_modulation_memory.py [--dim 512 --layers 2 --frames 21 --height 30]

Prints `B3 peak_memory_ratio=<ours/diffusers> target<=0.5 pass|miss` and the absolute numbers.
`--inject-slowdown S` makes our side hold S x 100 MiB more during its forward (B3 measures
memory, so that is its handicap).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from bench_common import Target, add_slowdown_flag, result_line, rss_bytes, slowdown

TARGET = Target("<=", 0.5)
BALLAST_MIB = 100  # per unit of injected slowdown
HEAD_DIM = 128


def model_config(args: argparse.Namespace) -> dict:
    return {
        "patch_size": (1, 2, 2),
        "num_attention_heads": args.dim // HEAD_DIM,
        "attention_head_dim": HEAD_DIM,
        "in_channels": 16,
        "out_channels": 16,
        "text_dim": 256,
        "freq_dim": 256,
        "ffn_dim": int(args.dim * 2.7),
        "num_layers": args.layers,
    }


def frame_timesteps(frames: int) -> torch.Tensor:
    """A Pusa-like step: first and last frames conditioned (t * 0.2), the rest at t = 937."""
    t = torch.full((1, frames), 937.0)
    t[:, 0] = t[:, -1] = 187.0
    return t


def child(args: argparse.Namespace) -> None:
    from diffusers import WanTransformer3DModel

    from pusa_batch.models.wan import PusaWanTransformer, WanConfig

    torch.set_grad_enabled(False)
    torch.manual_seed(0)
    ref = WanTransformer3DModel(**model_config(args)).eval()
    if args.child == "ours":
        model = PusaWanTransformer(WanConfig.from_dict(dict(ref.config))).eval()
        model.load_state_dict(ref.state_dict(), strict=True)
        del ref
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(1, 16, args.frames, args.height, args.width, generator=gen)
    ctx = torch.randn(1, 512, 256, generator=gen)
    t = frame_timesteps(args.frames)
    tokens_per_frame = (args.height // 2) * (args.width // 2)
    before = rss_bytes() // 1024
    start = time.perf_counter()
    if args.child == "ours":
        ballast = torch.ones(int(args.ballast_mib * 2**20) // 4)  # an injected handicap
        out = model(x, t, ctx)
        del ballast
    else:
        out = ref(x, t.repeat_interleave(tokens_per_frame, dim=1), ctx, return_dict=False)[0]
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    torch.save(out, args.out)
    result = {"before_kib": before, "peak_kib": peak, "seconds": seconds}
    Path(args.out + ".json").write_text(json.dumps(result))


def run(kind: str, args: argparse.Namespace, folder: str) -> tuple[dict, torch.Tensor]:
    out = f"{folder}/{kind}.pt"
    flags = ["--dim", args.dim, "--layers", args.layers, "--frames", args.frames]
    flags += ["--height", args.height, "--width", args.width, "--child", kind, "--out", out]
    flags += ["--ballast-mib", args.ballast_mib]
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    subprocess.run([sys.executable, __file__, *map(str, flags)], check=True, env=env)
    return json.loads(Path(out + ".json").read_text()), torch.load(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--frames", type=int, default=21)
    parser.add_argument("--height", type=int, default=30)
    parser.add_argument("--width", type=int, default=52)
    parser.add_argument("--child", choices=("ours", "diffusers"))
    parser.add_argument("--out")
    parser.add_argument("--ballast-mib", type=float, default=0.0, help=argparse.SUPPRESS)
    add_slowdown_flag(parser, f"our forward holds S x {BALLAST_MIB} MiB more")
    args = parser.parse_args()
    if args.child:
        return child(args)

    args.ballast_mib = slowdown(args) * BALLAST_MIB
    tokens = args.frames * (args.height // 2) * (args.width // 2)
    print(
        f"B3 config: dim={args.dim} layers={args.layers} F={args.frames} "
        f"latent {args.height}x{args.width} -> {tokens} tokens"
    )
    with tempfile.TemporaryDirectory() as folder:
        ours, out_ours = run("ours", args, folder)
        theirs, out_theirs = run("diffusers", args, folder)
    grow = {k: (r["peak_kib"] - r["before_kib"]) / 1024 for k, r in (("o", ours), ("d", theirs))}
    ratio = grow["o"] / grow["d"]
    diff = (out_ours - out_theirs).abs().max().item()
    for name, r, g in (("ours", ours, grow["o"]), ("diffusers", theirs, grow["d"])):
        print(
            f"B3 {name}: forward peak growth {g:.0f} MiB (rss before {r['before_kib'] / 1024:.0f}"
            f" MiB, peak {r['peak_kib'] / 1024:.0f} MiB), {r['seconds']:.1f} s"
        )
    print(f"B3 outputs max_abs_diff={diff:.2e} (scale {out_theirs.abs().max().item():.2f})")
    if args.ballast_mib:
        print(f"B3 injected: our forward held {args.ballast_mib:.0f} MiB more")
    print(result_line("B3", "peak_memory_ratio", ratio, TARGET))


if __name__ == "__main__":
    main()
