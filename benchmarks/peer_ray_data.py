"""The peer of B9: the same generation as a Ray Data job, built the way a strong user would.

The manifest's resolved items (pusa-batch's own `iter_items`, so both sides make the same videos)
become a dataset of one row each; `map_batches` runs a callable class that loads the same
`Pipeline` once per actor (a fixed pool of `--concurrency` actors, 1 CPU and 1 torch thread each,
as `run`'s workers) and, for each item, generates, encodes the mp4 and writes it (temporary name,
then renamed). One item per batch: a video is the unit of work and a batch of them would only hold
finished files back. Progress bars off; embedded local Ray as `run` starts it.

    python benchmarks/peer_ray_data.py MANIFEST OUT_DIR [--concurrency 2] [--pipeline tiny.toml]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

TINY = Path(__file__).resolve().parents[1] / "pipelines" / "tiny.toml"


class Generate:
    """One actor: the pipeline loaded once, then generate, encode and write per row."""

    def __init__(self, pipeline_path: str, out: str):
        import torch

        from pusa_batch.pipelines import load_pipeline
        from pusa_batch.pipelines.spec import load_pipeline_spec

        torch.set_num_threads(1)
        self.pipeline = load_pipeline(load_pipeline_spec(pipeline_path))
        self.out = Path(out)

    def __call__(self, batch: dict) -> dict:
        from pusa_batch.item import Item
        from pusa_batch.video import encode_mp4

        ids = []
        for text in batch["item"]:
            item = Item.from_dict(json.loads(text))
            video = encode_mp4(self.pipeline.generate(item), item.fps)
            partial = self.out / f".{item.id}.mp4.partial"
            partial.write_bytes(video)
            os.replace(partial, self.out / f"{item.id}.mp4")
            ids.append(item.id)
        return {"id": ids}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("manifest")
    parser.add_argument("out", type=Path)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--pipeline", default=str(TINY))
    args = parser.parse_args()

    import ray
    import ray.data

    from pusa_batch.manifest.read import iter_items
    from pusa_batch.pipelines.spec import load_pipeline_spec

    args.out.mkdir(parents=True, exist_ok=True)
    spec = load_pipeline_spec(args.pipeline)
    rows = [{"item": json.dumps(item.to_dict())} for item in iter_items(args.manifest, spec)]
    ray.init(
        num_cpus=max(os.cpu_count() or 1, args.concurrency),
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        logging_level=logging.WARNING,
        log_to_driver=False,
    )
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    done = (
        ray.data.from_items(rows, override_num_blocks=len(rows))
        .map_batches(
            Generate,
            fn_constructor_args=(str(Path(args.pipeline).resolve()), str(args.out.resolve())),
            batch_size=1,
            compute=ray.data.ActorPoolStrategy(size=args.concurrency),
            num_cpus=1,
        )
        .materialize()
    )
    assert done.count() == len(rows), f"{done.count()} of {len(rows)} rows came back"
    ray.shutdown()


if __name__ == "__main__":
    main()
