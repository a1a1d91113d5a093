"""`PipelineRunner`: an item's prepare / sample / finish on a pipeline loaded once per worker."""

from __future__ import annotations

import time
from typing import Any

from pusa_batch.engine.worker import OnStep
from pusa_batch.item import Item
from pusa_batch.manifest.read import content_hash
from pusa_batch.pipelines import load_pipeline
from pusa_batch.pipelines.spec import load_pipeline_spec
from pusa_batch.video import encode_mp4, loop_seam


def run_spec(pipeline_path: str, weights_storage_options: dict | None = None):
    """The pipeline spec a run uses: the TOML, plus `--weights-storage-option`s if any."""
    spec = load_pipeline_spec(pipeline_path)
    return (
        spec.with_weight_storage_options(weights_storage_options)
        if weights_storage_options
        else spec
    )


class PipelineRunner:
    """The real `ItemRunner`: a `Pipeline` loaded once from a pipeline TOML file."""

    def __init__(self, pipeline_path: str, weights_storage_options: dict | None = None):
        self.pipeline_path = pipeline_path
        self.weights_storage_options = dict(weights_storage_options or {})

    def load(self, on_staging: Any = None) -> dict[str, Any]:
        """Load the pipeline once; weight URLs are staged first (`on_staging` gets progress)."""
        self.spec = run_spec(self.pipeline_path, self.weights_storage_options)
        if self.spec.weights.tiny is None:  # before the slow imports: a missing file fails fast
            self.spec.check_weights(local_only=True)  # URLs: listed once, by the staging
        self.pipeline = load_pipeline(self.spec, on_staging=on_staging)
        self.description = self.pipeline.describe()  # once: it stats the weight files
        return {"pipeline": self.spec.name, "identity": self.description["identity"]}

    def prepare(self, item: Item) -> Any:
        return self.pipeline.prepare(item)

    def sample(self, prepared: Any, on_step: OnStep) -> Any:
        return self.pipeline.sample(prepared, callback=lambda step, total, x: on_step(step, total))

    def batch_key(self, prepared: Any) -> Any:
        return self.pipeline.batch_key(prepared)

    def sample_batch(self, prepared: list[Any], on_step: OnStep) -> list[Any]:
        callback = lambda step, total, x: on_step(step, total)  # noqa: E731
        return self.pipeline.sample_batch(prepared, callback=callback)

    def input_hashes(self, item: Item) -> list[dict[str, str]]:
        """Every input file with the sha256 of its bytes (cached per file within the process)."""
        options = self.pipeline.storage_options
        named = [("images", p) for p in item.images]
        named += [(col, getattr(item, col)) for col in ("video", "video_b") if getattr(item, col)]
        return [
            {"column": col, "path": path, "sha256": content_hash(path, storage_options=options)}
            for col, path in named
        ]

    def finish(self, item: Item, latents: Any) -> tuple[bytes, dict[str, Any]]:
        t0 = time.perf_counter()
        frames = self.pipeline.decode_item(item, latents)
        t1 = time.perf_counter()
        video = encode_mp4(frames, item.fps)
        t2 = time.perf_counter()
        meta = {
            "pipeline": self.description,
            "inputs": self.input_hashes(item),
            "conditioning": self.pipeline.conditioning_metadata(item),
            "frames": int(frames.shape[0]),
            "timings": {"decode": t1 - t0, "encode": t2 - t1},
        }
        if item.task == "loop":
            meta["loop_seam"] = loop_seam(frames)
        return video, meta
