"""The baseline of B1 and B8: one process looping over its share of a manifest, no engine.

What a user would write without pusa-batch: load the pipeline once, then for each item generate,
encode the mp4 and write the file (to a temporary name, then renamed, so a file that exists is
whole). B1 starts one such process per worker, each on every W-th item.

    python benchmarks/plain_loop.py MANIFEST OUT_DIR --shard K --of W [--pipeline tiny.toml]
"""

from __future__ import annotations

import argparse
import itertools
import os
from pathlib import Path

TINY = Path(__file__).resolve().parents[1] / "pipelines" / "tiny.toml"


def write_video(folder: Path, item_id: str, video: bytes) -> None:
    partial = folder / f".{item_id}.mp4.partial"
    partial.write_bytes(video)
    os.replace(partial, folder / f"{item_id}.mp4")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("manifest")
    parser.add_argument("out", type=Path)
    parser.add_argument("--shard", type=int, default=0)
    parser.add_argument("--of", type=int, default=1)
    parser.add_argument("--pipeline", default=str(TINY))
    parser.add_argument("--threads", type=int, default=1, help="torch threads (a worker's: 1)")
    args = parser.parse_args()

    import torch

    from pusa_batch.manifest.read import iter_items
    from pusa_batch.pipelines import load_pipeline
    from pusa_batch.pipelines.spec import load_pipeline_spec
    from pusa_batch.video import encode_mp4

    torch.set_num_threads(args.threads)
    spec = load_pipeline_spec(args.pipeline)
    pipeline = load_pipeline(spec)
    args.out.mkdir(parents=True, exist_ok=True)
    mine = itertools.islice(iter_items(args.manifest, spec), args.shard, None, args.of)
    for item in mine:
        frames = pipeline.generate(item)
        write_video(args.out, item.id, encode_mp4(frames, item.fps))


if __name__ == "__main__":
    main()
