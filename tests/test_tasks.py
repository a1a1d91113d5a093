"""Pixel <-> latent positions and manifest cell parsing."""

from __future__ import annotations

import numpy as np
import pytest

from pusa_batch.cells import parse_float_list, parse_int_list
from pusa_batch.errors import TaskError
from pusa_batch.tasks import (
    RULES,
    TASKS,
    latent_frames,
    latent_index,
    pixel_frames_of_latent,
    valid_num_frames,
)


def test_every_task_has_a_rule_with_a_description():
    assert TASKS == (
        "t2v",
        "i2v",
        "start_end",
        "keyframes",
        "extend",
        "complete",
        "transition",
        "loop",
    )
    assert set(RULES) == set(TASKS)
    assert all(RULES[t].description for t in TASKS)


@pytest.mark.parametrize(("pixel", "latent"), [(0, 0), (1, 1), (4, 1), (5, 2), (8, 2), (80, 20)])
def test_wan_pixel_frame_to_latent_frame(pixel, latent):
    assert latent_index(pixel, 4) == latent


@pytest.mark.parametrize(("pixel", "latent"), [(0, 0), (6, 1), (7, 2), (162, 27)])
def test_mochi_pixel_frame_to_latent_frame(pixel, latent):
    assert latent_index(pixel, 6) == latent


def test_latent_frame_counts_for_wan_and_mochi():
    assert latent_frames(81, 4) == 21
    assert latent_frames(163, 6) == 28
    assert latent_frames(1, 4) == 1


def test_pixel_frames_of_a_latent():
    assert pixel_frames_of_latent(0, 4) == (0,)
    assert pixel_frames_of_latent(1, 4) == (1, 2, 3, 4)
    assert pixel_frames_of_latent(20, 4) == (77, 78, 79, 80)
    assert pixel_frames_of_latent(1, 6) == (1, 2, 3, 4, 5, 6)


def test_every_pixel_frame_lies_in_the_latent_it_maps_to():
    for r in (4, 6):
        for p in range(1 + 10 * r):
            assert p in pixel_frames_of_latent(latent_index(p, r), r)


@pytest.mark.parametrize(("n", "ok"), [(81, True), (77, True), (1, True), (80, False), (82, False)])
def test_valid_num_frames_for_wan(n, ok):
    assert valid_num_frames(n, 4) is ok


def test_valid_num_frames_for_mochi():
    assert valid_num_frames(163, 6) and not valid_num_frames(161, 6)


# --- parsing ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cell", "expected"),
    [
        ("0,20", (0, 20)),
        (" 0 , 20 ", (0, 20)),
        ("[0, 20]", (0, 20)),
        ("0..3", (0, 1, 2, 3)),
        ("-4..-1", (-4, -3, -2, -1)),
        ("0..2,-1", (0, 1, 2, -1)),
        ("7", (7,)),
        (7, (7,)),
        (7.0, (7,)),
        ([0, 20], (0, 20)),
        ((0, -1), (0, -1)),
        (np.array([0, 40, 80]), (0, 40, 80)),
        (np.int64(5), (5,)),
        ([np.int64(3), np.int64(4)], (3, 4)),
        ('["0..1", 5]', (0, 1, 5)),
    ],
)
def test_parse_int_list_reads_every_cell_form(cell, expected):
    assert parse_int_list(cell) == expected


@pytest.mark.parametrize("cell", [None, "", "  ", float("nan"), [], np.array([])])
def test_empty_cells_parse_to_nothing(cell):
    assert parse_int_list(cell) == ()
    assert parse_float_list(cell) == ()


@pytest.mark.parametrize(
    ("cell", "fragment"),
    [
        ("0,abc", "'abc'"),
        ("12..0", "run upwards"),
        ("0..-1", "counted the same way"),
        ("[0, 20", "cannot read"),
        ([0.5], "whole frame"),
        ([True], "not a frame number"),
    ],
)
def test_parse_int_list_errors_name_the_column_and_the_text(cell, fragment):
    with pytest.raises(TaskError, match=fragment) as info:
        parse_int_list(cell, "cond_frames")
    assert info.value.column == "cond_frames"


@pytest.mark.parametrize(
    ("cell", "expected"),
    [
        ("0.2,0.5", (0.2, 0.5)),
        ("[0.0, 0.3, 0.4, 0.5]", (0.0, 0.3, 0.4, 0.5)),
        ("0.3", (0.3,)),
        (0.3, (0.3,)),
        (1, (1.0,)),
        ([0.1, 0.2], (0.1, 0.2)),
        (np.array([0.25, 0.5]), (0.25, 0.5)),
    ],
)
def test_parse_float_list_reads_every_cell_form(cell, expected):
    assert parse_float_list(cell) == pytest.approx(expected)


@pytest.mark.parametrize("cell", ["0.2,x", "[0.2, null]", [True], "0..1"])
def test_parse_float_list_refuses_non_numbers_and_shows_them(cell):
    with pytest.raises(TaskError, match="noise_multipliers: .*not a number") as info:
        parse_float_list(cell)
    assert info.value.column == "noise_multipliers"


def test_parse_float_list_refuses_nan_inside_a_list():
    with pytest.raises(TaskError, match="NaN"):
        parse_float_list([0.2, float("nan")])
