"""Every benchmark's verdict can fail: an injected slowdown on the measured side reads `miss`.

The engine benchmarks (B1/B8/B9, B6, B7) need Ray and a minute or more, so their figures are
checked here from timed runs made up with and without a slowdown; the cheapest (B5, and B13 at a
tiny size without its local Ray) are run for real with `--inject-slowdown`. B3's real run takes
half a minute; by hand:
`python benchmarks/b3_modulation_memory.py --dim 256 --frames 3 --inject-slowdown 3` reads miss.
No assert here depends on how fast this machine is: an injected delay only ever makes the
measured side slower (or bigger).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import b1_throughput  # noqa: E402
import b5_validate_1m  # noqa: E402
import b6_overlap  # noqa: E402
import b7_batching  # noqa: E402
import b13_driver_scale  # noqa: E402
from bench_common import SLOWDOWN_ENV, Target, add_slowdown_flag, result_line, slowdown  # noqa: E402
from engine_runs import SideRun, median_ratio  # noqa: E402

RESULT = re.compile(r"^(B\d+) (\S+)=(\S+) target(\S+) (pass|miss)$", re.MULTILINE)


def side(name: str, items: int, per_item: float, start_up: float, extra: float = 0.0) -> SideRun:
    """A side that starts its first item after `start_up` s and commits one every `per_item`
    s, each `extra` s later still (an injected slowdown), and returns 1 s after its last."""
    commits = tuple(start_up + (n + 1) * (per_item + extra) for n in range(items))
    return SideRun(name, 0.0, commits[-1] + 1.0, commits)


def verdicts(lines: list[str]) -> dict[str, str]:
    return {m[2]: m[5] for line in lines for m in RESULT.finditer(line)}


# -- the shared pieces ---------------------------------------------------------------------


def test_a_result_line_is_what_run_all_parses_and_says_whether_the_target_is_met():
    assert result_line("B7", "ratio", 1.42, Target(">=", 1.3)) == "B7 ratio=1.420 target>=1.3 pass"
    assert result_line("B8", "extra_s", 7.2, Target("<=", 5), 2) == "B8 extra_s=7.20 target<=5 miss"


def test_the_slowdown_comes_from_the_flag_else_the_environment_else_zero():
    import argparse

    parser = argparse.ArgumentParser()
    add_slowdown_flag(parser, "S seconds more")
    assert slowdown(parser.parse_args(["--inject-slowdown", "2"]), {SLOWDOWN_ENV: "5"}) == 2.0
    assert slowdown(parser.parse_args([]), {SLOWDOWN_ENV: "5"}) == 5.0
    assert slowdown(parser.parse_args([]), {}) == 0.0


def test_a_sides_rates_count_from_launch_and_from_its_first_commit():
    run = SideRun("run", 100.0, 110.0, (104.0, 106.0, 108.0))
    assert run.e2e_rate == pytest.approx(3 / 10)
    assert run.steady_rate == pytest.approx(2 / 4)
    assert run.first_item_s == pytest.approx(4.0)
    assert median_ratio([(1.0, 2.0), (3.0, 2.0), (2.0, 2.0)]) == 1.0


@pytest.mark.parametrize("script", ["b1_throughput.py", "b2_vs_diffusers.py",
                                    "b3_modulation_memory.py", "b5_validate_1m.py",
                                    "b6_overlap.py", "b7_batching.py",
                                    "b13_driver_scale.py"])  # fmt: skip
def test_every_benchmark_of_ours_takes_an_injected_slowdown(script):
    assert "add_slowdown_flag(parser" in (BENCH / script).read_text()


# -- B1, B8, B9: run against a plain loop and Ray Data ---------------------------------------


def b1_rounds(extra: float) -> list[b1_throughput.Round]:
    """Two rounds in which run starts 4 s after the loop and, with `extra`, is slower per item."""
    runs = {
        "loop": side("loop", 60, 0.15, start_up=6.0),
        "run": side("run", 60, 0.15, start_up=10.0, extra=extra),
        "ray-data": side("ray-data", 60, 0.16, start_up=12.0),
    }
    return [b1_throughput.Round(runs), b1_throughput.Round(runs)]


def test_b1_b8_b9_pass_for_a_run_as_fast_as_its_baselines():
    lines = b1_throughput.result_lines(b1_throughput.figures(b1_rounds(extra=0.0)))
    assert [line.split()[0] for line in lines] == ["B1", "B1", "B8", "B9", "B9"]
    assert set(verdicts(lines).values()) == {"pass"}


def test_b1_b8_b9_miss_when_each_run_item_is_slowed():
    lines = b1_throughput.result_lines(b1_throughput.figures(b1_rounds(extra=1.5)))
    assert set(verdicts(lines).values()) == {"miss"}, lines


def test_b9_is_left_out_without_the_ray_data_side():
    rounds = [b1_throughput.Round({k: v for k, v in r.runs.items() if k != "ray-data"})
              for r in b1_rounds(extra=0.0)]  # fmt: skip
    assert set(b1_throughput.figures(rounds)) == {"e2e_ratio", "steady_ratio", "first_item_extra_s"}


# -- B6 overlap, B7 batching ---------------------------------------------------------------


def test_b6_misses_when_overlapped_items_are_slowed_to_the_serial_rate():
    serial = side("serial", 16, 0.6, start_up=5.0)
    overlapped = side("overlapped", 16, 0.35, start_up=5.0)
    slowed = side("overlapped", 16, 0.35, start_up=5.0, extra=0.25)
    ratio = median_ratio([(overlapped.steady_rate, serial.steady_rate)])
    slowed_ratio = median_ratio([(slowed.steady_rate, serial.steady_rate)])
    assert b6_overlap.TARGET.met_by(ratio) and not b6_overlap.TARGET.met_by(slowed_ratio)


def test_b6_sampler_busy_is_sampling_seconds_over_the_steady_window():
    run = SideRun("overlapped", 0.0, 10.0, (2.0, 3.0, 4.0))
    marks = [{"timings": {"sample": 0.5}}] * 3
    assert b6_overlap.busy_fraction(marks, run) == pytest.approx(1.0 / 2.0)


def test_b6s_ideal_is_sample_plus_finish_over_the_longer_of_the_two():
    marks = [{"sample_batch": 1, "timings": {"sample": 0.3, "decode": 0.05, "encode": 0.01}}]
    assert b6_overlap.ideal_ratio(marks) == pytest.approx(0.36 / 0.3)


def test_b7_misses_when_batched_items_are_slowed():
    alone = side("batch 1", 32, 0.35, start_up=5.0)
    batched = side("batch 4", 32, 0.18, start_up=5.0)
    slowed = side("batch 4", 32, 0.18, start_up=5.0, extra=0.2)
    assert b7_batching.TARGET.met_by(median_ratio([(batched.e2e_rate, alone.e2e_rate)]))
    assert not b7_batching.TARGET.met_by(median_ratio([(slowed.e2e_rate, alone.e2e_rate)]))


def test_b7_counts_the_items_sampled_with_company():
    marks = [{"sample_batch": 4}] * 3 + [{"sample_batch": 1}]
    assert b7_batching.batched_share(marks) == 0.75


# -- B5, run for real ---------------------------------------------------------------------


def run_bench(script: str, *args: str, env: dict | None = None) -> str:
    done = subprocess.run(
        [sys.executable, str(BENCH / script), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_b5s_target_scales_with_the_rows_it_validates():
    assert str(b5_validate_1m.target(1_000_000)) == "target<=10"
    assert str(b5_validate_1m.target(2_000_000)) == "target<=20"
    assert str(b5_validate_1m.target(20_000)) == "target<=1"  # a small run's fixed cost


def test_b5_misses_with_a_slowdown_injected_by_flag_or_environment():
    by_flag = run_bench("b5_validate_1m.py", "--rows", "20000", "--inject-slowdown", "1.5")
    by_env = run_bench("b5_validate_1m.py", "--rows", "20000", env={SLOWDOWN_ENV: "1.5"})
    assert verdicts([by_flag]) == verdicts([by_env]) == {"validate_20000_seconds": "miss"}


# -- B13, the driver alone: run for real, tiny ---------------------------------------------


def mark(items: int, wall_s: float, worker_s: float, rss_mb: float) -> b13_driver_scale.Mark:
    return b13_driver_scale.Mark(items, wall_s, worker_s, int(rss_mb * 2**20))


def test_b13s_rate_counts_the_drivers_own_seconds_between_two_marks():
    first, last = mark(100, 10.0, 4.0, 300), mark(900, 30.0, 16.0, 300)
    assert b13_driver_scale.sustained_rate(first, last) == pytest.approx(800 / 8.0)


def test_b13s_memory_growth_is_the_slope_of_rss_over_the_marks():
    steady = [mark(100 + 100 * n, 1.0, 0.0, 300 + n) for n in range(9)]  # +1 MB per 100 items
    assert b13_driver_scale.growth_per_item(steady) == pytest.approx(2**20 / 100)
    shrinking = [mark(100 + 100 * n, 1.0, 0.0, 300 - n) for n in range(9)]
    assert b13_driver_scale.growth_per_item(shrinking) == 0.0  # shrinking is flat


def test_b13_misses_both_targets_with_a_slowdown_injected():
    out = run_bench(
        "b13_driver_scale.py",
        *("--rows", "2000", "--items", "200", "--workers", "20", "--no-ray"),
        *("--inject-slowdown", "0.01"),
    )
    assert verdicts([out]) == {
        "driver_items_per_s": "miss",
        "driver_rss_growth_b_per_item": "miss",
    }, out
