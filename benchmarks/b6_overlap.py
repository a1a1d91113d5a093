"""B6: one worker's sampler-busy fraction with decode/encode/commit overlapped vs run serially.

Same tiny items twice on one local-Ray worker: `overlap=True` (prepare ahead, finish in the
background) and `overlap=False` (one item at a time). The busy fraction is taken between the
first sampling start and the last sampling end (steady state: a run's first prepare and last
finish cannot overlap anything); the fraction from pipeline loaded to last commit is printed too.
Prints `B6 serial_busy=<x> overlap_busy=<y> target>=0.95 pass|miss`.
"""

from __future__ import annotations

import argparse

from b1_engine_efficiency import measure


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=24)
    parser.add_argument("--steps", type=int, default=60)
    args = parser.parse_args()
    serial = measure(1, args.items, args.steps, overlap=False)
    overlapped = measure(1, args.items, args.steps, overlap=True)
    for name, r in (("serial", serial), ("overlapped", overlapped)):
        print(
            f"B6 {name}: busy={r['steady_fraction']:.3f} loaded_to_end_busy={r['fraction']:.3f} "
            f"window_s={r['window_s']:.1f} "
            f"items_per_s={r['items_per_s']:.2f}"
        )
    verdict = "pass" if overlapped["steady_fraction"] >= 0.95 else "miss"
    print(
        f"B6 serial_busy={serial['steady_fraction']:.3f} "
        f"overlap_busy={overlapped['steady_fraction']:.3f} "
        f"target>=0.95 {verdict}"
    )


if __name__ == "__main__":
    main()
