"""plan_conditioning: every task's rule and every error, with Wan's 81 frames (r=4) unless said."""

from __future__ import annotations

import json

import pytest

from pusa_batch.errors import TaskError
from pusa_batch.tasks import TASKS, conditioning_video_layout, plan_conditioning

WAN = {"num_frames": 81, "temporal_factor": 4}
MOCHI = {"num_frames": 163, "temporal_factor": 6}


def plan(task, **kw):
    return plan_conditioning(task, **{**WAN, **kw})


def error(task, **kw) -> TaskError:
    with pytest.raises(TaskError) as info:
        plan(task, **kw)
    return info.value


# --- the rules -------------------------------------------------------------------------------


def test_t2v_conditions_nothing():
    p = plan("t2v")
    assert p.slots == () and p.latent_indices == ()


def test_i2v_puts_its_image_on_the_first_latent_with_multiplier_0_2():
    p = plan("i2v", n_images=1)
    assert p.latent_indices == (0,)
    assert p.multipliers == (0.2,)
    assert p.pixel_frames == ((0,),)
    assert p.slots[0].source == "image" and p.slots[0].image_index == 0
    assert p.slots[0].encode_alone


@pytest.mark.parametrize(("frame", "latent"), [(4, 1), (5, 2), (40, 10), (80, 20), (-1, 20)])
def test_i2v_image_can_sit_at_any_frame(frame, latent):
    p = plan("i2v", n_images=1, cond_frames=[frame])
    assert p.latent_indices == (latent,)
    assert p.pixel_frames == ((frame % 81,),)


def test_start_end_puts_first_image_at_frame_0_and_second_at_the_last():
    p = plan("start_end", n_images=2)
    assert p.latent_indices == (0, 20)
    assert p.pixel_frames == ((0,), (80,))
    assert p.multipliers == (0.2, 0.5)
    assert [s.image_index for s in p.slots] == [0, 1]


def test_keyframes_default_to_evenly_spaced_frames_with_0_3_each():
    p = plan("keyframes", n_images=3)
    assert p.pixel_frames == ((0,), (40,), (80,))
    assert p.latent_indices == (0, 10, 20)
    assert p.multipliers == (0.3, 0.3, 0.3)


def test_keyframes_pair_images_frames_and_multipliers_in_listed_order():
    p = plan("keyframes", n_images=3, cond_frames="80,0,40", noise_multipliers="0.5,0.1,0.3")
    assert p.latent_indices == (0, 10, 20)
    assert [s.image_index for s in p.slots] == [1, 2, 0]
    assert p.multipliers == (0.1, 0.3, 0.5)


def test_extend_conditions_the_first_13_frames_as_latents_0_to_3():
    p = plan("extend", video_frames=81)
    assert p.latent_indices == (0, 1, 2, 3)
    assert p.multipliers == (0.0, 0.3, 0.4, 0.5)
    assert sum(p.pixel_frames, ()) == tuple(range(13))
    assert [s.source_frames for s in p.slots] == list(p.pixel_frames)
    assert {s.source for s in p.slots} == {"video"}


def test_extend_for_mochi_conditions_the_first_19_frames():
    p = plan_conditioning("extend", video_frames=163, **MOCHI)
    assert p.latent_indices == (0, 1, 2, 3)
    assert sum(p.pixel_frames, ()) == tuple(range(19))


def test_extend_truncates_its_default_multipliers_for_fewer_latents():
    p = plan("extend", video_frames=20, cond_frames="0..8")
    assert p.latent_indices == (0, 1, 2)
    assert p.multipliers == (0.0, 0.3, 0.4)


def test_extend_repeats_its_last_default_multiplier_for_more_latents():
    p = plan("extend", video_frames=30, cond_frames="0..20")
    assert p.multipliers == (0.0, 0.3, 0.4, 0.5, 0.5, 0.5)


def test_a_latent_is_conditioned_when_any_of_its_frames_is_listed():
    p = plan("extend", video_frames=81, cond_frames="0..10")
    assert p.latent_indices == (0, 1, 2, 3)
    assert p.pixel_frames[-1] == (9, 10, 11, 12)


def test_complete_conditions_frame_0_and_the_last_latent_from_the_same_video_frames():
    p = plan("complete", video_frames=81)
    assert p.latent_indices == (0, 20)
    assert p.pixel_frames == ((0,), (77, 78, 79, 80))
    assert [s.source_frames for s in p.slots] == [(0,), (77, 78, 79, 80)]
    assert p.multipliers == (0.3, 0.3)


def test_transition_takes_the_end_of_clip_a_and_the_start_of_clip_b():
    p = plan("transition", video_frames=50, video_b_frames=30)
    assert p.latent_indices == (0, 1, 2, 18, 19, 20)
    assert [s.source for s in p.slots] == ["video"] * 3 + ["video_b"] * 3
    a_frames = sum((s.source_frames for s in p.slots[:3]), ())
    b_frames = sum((s.source_frames for s in p.slots[3:]), ())
    assert a_frames == tuple(range(41, 50))  # A's last 9 = 1 + 2r frames
    assert b_frames == tuple(range(12))  # B's first 12 = 3r frames
    assert sum(p.pixel_frames[3:], ()) == tuple(range(69, 81))
    assert p.multipliers == (0.1, 0.3, 0.3, 0.3, 0.3, 0.3)


def test_loop_puts_one_image_at_the_first_and_last_latent_frozen():
    p = plan("loop", n_images=1)
    assert p.latent_indices == (0, 20)
    assert [s.image_index for s in p.slots] == [0, 0]
    assert p.multipliers == (0.0, 0.0)


def test_loop_from_a_video_uses_its_first_frame_encoded_alone():
    p = plan("loop", video_frames=5)
    assert [(s.source, s.source_frames, s.encode_alone) for s in p.slots] == [
        ("video", (0,), True),
        ("video", (0,), True),
    ]


def test_one_multiplier_applies_to_every_conditioned_latent():
    p = plan("extend", video_frames=81, noise_multipliers="0.1")
    assert p.multipliers == (0.1, 0.1, 0.1, 0.1)


def test_multipliers_for_video_tasks_follow_latent_order():
    p = plan("extend", video_frames=81, cond_frames="12,0", noise_multipliers=[0.0, 0.2])
    assert p.latent_indices == (0, 3)
    assert p.multipliers == (0.0, 0.2)


def test_slots_are_sorted_by_latent_and_unique():
    p = plan("keyframes", n_images=2, cond_frames="-1,0")
    assert p.latent_indices == (0, 20)


def test_metadata_is_json_ready_and_names_positions_and_multipliers():
    meta = plan("start_end", n_images=2).to_metadata()
    assert json.loads(json.dumps(meta)) == meta
    assert meta["latent_indices"] == [0, 20]
    assert meta["pixel_frames"] == [[0], [80]]
    assert meta["multipliers"] == [0.2, 0.5]
    assert meta["slots"][1] == {
        "latent_index": 20,
        "multiplier": 0.5,
        "pixel_frames": [80],
        "source": "image",
        "image_index": 1,
        "source_frames": [],
        "encode_alone": True,
    }


# --- errors ----------------------------------------------------------------------------------


def test_unknown_task_lists_the_tasks():
    e = error("v2v")
    assert e.column == "task" and all(t in e.message for t in TASKS)


def test_frame_outside_the_clip_says_the_valid_range():
    e = error("i2v", n_images=1, cond_frames=[81])
    assert e.column == "cond_frames"
    assert "0..80" in e.message and "-81..-1" in e.message


def test_negative_frame_beyond_the_start_is_outside_the_clip():
    assert "0..80" in error("i2v", n_images=1, cond_frames=[-82]).message


def test_more_frames_than_images_is_an_error():
    e = error("keyframes", n_images=2, cond_frames="0,40,80")
    assert e.column == "cond_frames" and "3 frame(s)" in e.message and "2 image(s)" in e.message


def test_multiplier_count_that_matches_nothing_is_an_error():
    e = error("start_end", n_images=2, noise_multipliers="0.1,0.2,0.3")
    assert e.column == "noise_multipliers" and "3 multipliers for 2" in e.message


def test_multiplier_count_for_video_tasks_counts_latents():
    e = error("extend", video_frames=81, noise_multipliers="0.1,0.2")
    assert "2 multipliers for 4 conditioned latent frames" in e.message


@pytest.mark.parametrize("value", ["1.5", "-0.1"])
def test_multiplier_outside_zero_one_is_an_error(value):
    e = error("i2v", n_images=1, noise_multipliers=value)
    assert e.column == "noise_multipliers" and "[0, 1]" in e.message


def test_two_images_in_the_same_latent_is_an_error():
    e = error("keyframes", n_images=2, cond_frames="37,40")
    assert e.column == "cond_frames"
    assert "latent frame 10" in e.message and "77" not in e.message and "37..40" in e.message


def test_conditioning_every_latent_is_an_error():
    e = error("extend", video_frames=81, cond_frames="0..80")
    assert e.column == "cond_frames" and "leave at least one free" in e.message


def test_short_video_for_extend_says_frames_needed_and_found():
    e = error("extend", video_frames=10)
    assert e.column == "video" and "has 10 frames" in e.message and "needs 13" in e.message


def test_complete_needs_the_whole_clip_length():
    e = error("complete", video_frames=80)
    assert "has 80 frames" in e.message and "needs 81" in e.message


def test_short_clip_b_for_transition_names_video_b():
    e = error("transition", video_frames=50, video_b_frames=11)
    assert e.column == "video_b" and "needs 12" in e.message


def test_short_clip_a_for_transition_names_video():
    e = error("transition", video_frames=8, video_b_frames=40)
    assert e.column == "video" and "needs 9" in e.message


@pytest.mark.parametrize(("n", "suggested"), [(80, "77 or 81"), (82, "81 or 85"), (2, "1 or 5")])
def test_num_frames_not_4k_plus_1_suggests_the_nearest_valid_values(n, suggested):
    e = error("t2v", num_frames=n)
    assert e.column == "num_frames" and suggested in e.message


def test_num_frames_for_mochi_must_be_6k_plus_1():
    with pytest.raises(TaskError, match="157 or 163"):
        plan_conditioning("t2v", num_frames=160, temporal_factor=6)


@pytest.mark.parametrize(
    ("task", "kw", "column"),
    [
        ("i2v", {}, "image"),
        ("start_end", {}, "images"),
        ("extend", {}, "video"),
        ("transition", {"video_frames": 81}, "video_b"),
    ],
)
def test_missing_required_input_names_it(task, kw, column):
    e = error(task, **kw)
    assert e.column == column and "none was given" in e.message


@pytest.mark.parametrize(
    ("task", "kw", "column"),
    [
        ("t2v", {"n_images": 1}, "image"),
        ("i2v", {"n_images": 1, "video_frames": 81}, "video"),
        ("extend", {"video_frames": 81, "video_b_frames": 81}, "video_b"),
        ("complete", {"video_frames": 81, "n_images": 1}, "image"),
    ],
)
def test_input_the_task_does_not_use_is_an_error(task, kw, column):
    e = error(task, **kw)
    assert e.column == column and "does not use" in e.message


def test_loop_needs_exactly_one_of_image_or_video():
    assert "neither" in error("loop").message
    assert "both" in error("loop", n_images=1, video_frames=81).message


def test_i2v_with_two_images_points_to_keyframes():
    e = error("i2v", n_images=2)
    assert e.column == "image" and "keyframes" in e.message


def test_start_end_needs_exactly_two_images():
    assert "exactly 2" in error("start_end", n_images=3).message


@pytest.mark.parametrize("column", ["cond_frames", "noise_multipliers"])
def test_t2v_refuses_conditioning_columns(column):
    e = error("t2v", **{column: "0"})
    assert e.column == column


# --- the conditioning video ------------------------------------------------------------------


def test_layout_for_extend_reads_the_real_frames_and_stops_after_the_last_conditioned():
    p = plan("extend", video_frames=81)
    layout = conditioning_video_layout(p, 81)
    assert layout[:13] == tuple(("video", i) for i in range(13))
    assert set(layout[13:]) == {None}


def test_layout_for_complete_reads_every_frame_so_the_last_latent_matches_pusas_v2v():
    p = plan("complete", video_frames=100)
    assert conditioning_video_layout(p, 81) == tuple(("video", i) for i in range(81))


def test_layout_for_transition_holds_clip_as_last_frame_across_the_gap():
    p = plan("transition", video_frames=50, video_b_frames=30)
    layout = conditioning_video_layout(p, 81)
    assert len(layout) == 81
    assert layout[:9] == tuple(("video", i) for i in range(41, 50))
    assert set(layout[9:69]) == {("video", 49)}
    assert layout[69:] == tuple(("video_b", i) for i in range(12))


def test_layout_before_the_first_conditioned_frame_repeats_it():
    p = plan("transition", video_frames=50, video_b_frames=30, cond_frames="-4..-1")
    layout = conditioning_video_layout(p, 81)
    assert set(layout[:77]) == {("video_b", 0)}
    assert layout[77:] == tuple(("video_b", i) for i in range(4))


def test_layout_is_empty_for_image_tasks():
    assert set(conditioning_video_layout(plan("keyframes", n_images=2), 81)) == {None}


# --- defaults that fit a short clip ------------------------------------------------------------


def free_latents(p, num_frames: int, r: int = 4) -> list[int]:
    taken = {slot.latent_index for slot in p.slots}
    return [k for k in range(1 + (num_frames - 1) // r) if k not in taken]


def test_a_default_transition_on_a_17_frame_clip_shrinks_and_leaves_a_latent_free():
    p = plan("transition", num_frames=17, video_frames=40, video_b_frames=40)
    assert sorted(s.latent_index for s in p.slots) == [0, 1, 3, 4]
    assert free_latents(p, 17) == [2]


@pytest.mark.parametrize("task", ["extend", "complete"])
@pytest.mark.parametrize("num_frames", [5, 9, 13])
def test_default_video_conditioning_always_leaves_a_latent_to_generate(task, num_frames):
    p = plan(task, num_frames=num_frames, video_frames=40)
    assert p.slots and free_latents(p, num_frames)
    assert p.slots[0].latent_index == 0  # the opening latent is the last to go


def test_an_explicit_request_that_cannot_fit_is_still_an_error():
    problem = error(
        "transition",
        num_frames=17,
        video_frames=40,
        video_b_frames=40,
        cond_frames=tuple(range(17)),
    )
    assert problem.column == "cond_frames"
