"""The gallery's pure parts: sweep ids read back, stage times counted once, the run's summary,
and a timing plot that stays small for thousands of items."""

from __future__ import annotations

import re

import pytest

from pusa_batch.manifest.builders import cap_id
from pusa_batch.outputs.gallery_cards import SweepPoint, sweep_point, value_text
from pusa_batch.outputs.gallery_timings import (
    MAX_BARS,
    Timed,
    duration_text,
    exclusive_stages,
    run_stats,
    timing_svg,
)

# --------------------------------------------------------------------------- sweep ids


def test_a_sweep_id_gives_its_base_id_and_swept_columns():
    point = sweep_point("fox--steps_10--noise_multipliers_0_0.2")
    assert point == SweepPoint("fox", ("steps", "noise_multipliers"))


def test_a_base_id_may_itself_contain_a_double_dash():
    assert sweep_point("a--b--seed_3") == SweepPoint("a--b", ("seed",))


@pytest.mark.parametrize("item_id", ["fox", "a--b", "--steps_10", "p-1a2b3c4d5e-s0"])
def test_ids_no_sweep_made_are_not_read_as_sweeps(item_id):
    assert sweep_point(item_id) is None


def test_a_capped_sweep_id_keeps_its_base_and_whole_columns():
    long_id = cap_id("b" * 100 + "--steps_10--guidance_scale_3.0--shift_5.0")
    assert len(long_id) == 128
    point = sweep_point(long_id)
    assert point is not None and point.base_id == "b" * 100 and point.columns[0] == "steps"


def test_values_read_short_and_without_secrets():
    assert value_text([0, 0.2]) == "[0, 0.2]"
    assert value_text("s3://key:secret@bucket/in/cat.png") == "cat.png"
    assert value_text(None) == "default"


# --------------------------------------------------------------------------- stages


def test_finish_is_drawn_as_what_decode_and_encode_leave_of_it():
    stages = exclusive_stages({"sample": 4.0, "finish": 1.0, "decode": 0.5, "encode": 0.3})
    assert stages == pytest.approx(
        {"sample": 4.0, "decode": 0.5, "encode": 0.3, "finish (rest)": 0.2}
    )


def test_stage_times_that_are_not_seconds_are_left_out():
    stages = exclusive_stages({"sample": 1.0, "prepare": -1, "decode": float("nan"), "x": "a"})
    assert stages == {"sample": 1.0}


def test_wall_time_runs_from_the_first_start_to_the_last_commit():
    items = [
        Timed({"queue": 1.0, "sample": 9.0}, "2025-01-01T00:00:10+00:00"),  # started at 0 s
        Timed({"sample": 10.0}, "2025-01-01T00:01:00+00:00"),
    ]
    stats = run_stats(items, failed=1, damaged=0)
    assert stats.wall_s == 60.0 and stats.items_per_min == 2.0
    assert (stats.done, stats.failed) == (2, 1)


def test_a_batched_forward_counts_once_in_sampling_time():
    items = [Timed({"sample": 6.0}, None, sample_batch=3) for _ in range(3)]
    stats = run_stats(items, failed=0, damaged=0)
    assert stats.sampling_s == 6.0 and stats.wall_s is None and stats.items_per_min is None


def test_stage_statistics_give_median_p90_and_total():
    items = [Timed({"sample": float(s)}) for s in range(1, 11)]
    (sample,) = run_stats(items, 0, 0).stages
    assert (sample.items, sample.median_s, sample.max_s, sample.total_s) == (10, 5.5, 10.0, 55.0)
    assert sample.p90_s == pytest.approx(9.1)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(None, "n/a"), (2.34, "2.3 s"), (42.4, "42 s"), (125, "2 min 05 s"), (7380, "2 h 03 min")],
)
def test_durations_read_in_units_a_person_uses(seconds, text):
    assert duration_text(seconds) == text


# --------------------------------------------------------------------------- plot


def test_the_plot_draws_one_path_per_stage_and_one_bar_per_item():
    svg = timing_svg([{"prepare": 0.1, "sample": 2.0}, {"prepare": 0.2, "sample": 3.0}])
    paths = re.findall(r'<path fill="[^"]+" d="([^"]*)"><title>(\w+)</title>', svg)
    assert [stage for _, stage in paths] == ["prepare", "sample"]
    assert all(d.count("M") == 2 for d, _ in paths)


def test_thousands_of_items_are_binned_into_a_small_plot():
    rows = [{"prepare": 0.1, "sample": 2.0 + n % 5, "decode": 0.3} for n in range(5000)]
    svg = timing_svg(rows)
    sample_path = re.search(r'd="([^"]*)"><title>sample<', svg).group(1)
    assert sample_path.count("M") <= MAX_BARS
    assert "each bar the mean of 21" in svg and len(svg) < 60_000


def test_no_timed_items_draw_no_plot():
    assert timing_svg([]) == ""
