"""B1: how busy the engine keeps its samplers (2 workers, 40 tiny items, local Ray).

efficiency = sampler-busy seconds / (workers x wall seconds), counted from the moment the last
worker has loaded its pipeline to the last committed item. Prints
`B1 engine_efficiency=<x> target>=0.90 pass|miss`.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from pusa_batch.engine.config import ActorLoaded, ItemDone, RunConfig
from pusa_batch.engine.run import run

TINY = Path(__file__).resolve().parents[1] / "pipelines" / "tiny.toml"


def write_manifest(folder: Path, items: int, steps: int) -> Path:
    rows = [f"b{n:03d},t2v,benchmark clip {n},9,32,32,{steps},{n}" for n in range(items)]
    path = folder / "manifest.csv"
    path.write_text("\n".join(["id,task,prompt,num_frames,height,width,steps,seed", *rows]))
    return path


def sample_windows(events: list[tuple[float, object]]) -> list[tuple[float, float]]:
    done = [e for _, e in events if isinstance(e, ItemDone)]
    return [
        (e.timings["sample_start_unix"], e.timings["sample_start_unix"] + e.timings["sample"])
        for e in done
    ]


def busy_fraction(
    windows: list[tuple[float, float]], workers: int, start: float, end: float
) -> float:
    """Sampler-busy seconds inside [start, end] over workers x (end - start)."""
    busy = sum(max(0.0, min(s1, end) - max(s0, start)) for s0, s1 in windows)
    return busy / (workers * (end - start))


def measure(workers: int, items: int, steps: int, overlap: bool = True) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        manifest = write_manifest(folder, items, steps)
        events: list[tuple[float, object]] = []
        cfg = RunConfig(
            str(manifest), str(folder / "out"), str(TINY), workers=workers, overlap=overlap
        )
        summary = run(cfg, lambda e: events.append((time.time(), e)))
        start = max(t for t, e in events if isinstance(e, ActorLoaded))
        end = max(t for t, e in events if isinstance(e, ItemDone))
        windows = sample_windows(events)
        first, last = min(w[0] for w in windows), max(w[1] for w in windows)
        loads = [e.seconds for _, e in events if isinstance(e, ActorLoaded)]
        return {
            "fraction": busy_fraction(windows, workers, start, end),
            "steady_fraction": busy_fraction(windows, workers, first, last),
            "window_s": end - start,
            "wall_s": summary.wall_s,
            "generated": summary.generated,
            "load_s": loads,
            "items_per_s": summary.generated / (end - start),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=40)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    r = measure(args.workers, args.items, args.steps)
    print(
        f"B1 items={r['generated']} workers={args.workers} wall_s={r['wall_s']:.1f} "
        f"loaded_window_s={r['window_s']:.1f} load_s={[round(x, 1) for x in r['load_s']]} "
        f"items_per_s={r['items_per_s']:.2f}"
    )
    verdict = "pass" if r["fraction"] >= 0.90 else "miss"
    print(f"B1 engine_efficiency={r['fraction']:.3f} target>=0.90 {verdict}")


if __name__ == "__main__":
    main()
