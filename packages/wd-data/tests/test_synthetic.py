"""Synthetic worlds: determinism, ground truth that matches the pixels, captions, and the measurements."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from wd_data.collate import collate_samples
from wd_data.synthetic import (
    BACKGROUND,
    EVAL_SEED_START,
    KINDS,
    PALETTE,
    TRAIN_SEEDS,
    DriveConfig,
    DriveDataset,
    DriveWorld,
    ShapesConfig,
    ShapesDataset,
    ShapesWorld,
    colour_mask,
    detect_shapes,
    palette_labels,
    estimate_forward_motion,
    estimate_road_heading,
    estimate_yaw_change,
    eval_seeds,
)

SEEDS = st.integers(0, 2**32 - 1)
# How far each kind reaches from its centroid (the triangle's apex sits 4/3 r above it).
REACH = {"circle": 1.0, "square": 1.0, "triangle": 4 / 3}


def constant_actions(num_frames: int, yaw: float, speed: float) -> np.ndarray:
    return np.tile(np.array([[yaw, speed]], dtype=np.float32), (num_frames, 1))


def test_shapes_same_seed_same_clip_and_different_seeds_differ():
    world = ShapesWorld(ShapesConfig(num_frames=6))
    first, again, other = world.render(5), world.render(5), world.render(6)
    np.testing.assert_array_equal(first.frames, again.frames)
    assert first.caption == again.caption
    for key in first.state:
        np.testing.assert_array_equal(first.state[key], again.state[key])
    assert not np.array_equal(first.frames, other.frames)


def test_shapes_clip_layout():
    clip = ShapesWorld(ShapesConfig(height=40, width=56, num_frames=7)).render(3)
    count = len(clip.state["colours"])
    assert clip.frames.dtype == np.uint8 and clip.frames.shape == (7, 40, 56, 3)
    assert clip.state["positions"].shape == clip.state["velocities"].shape == (7, count, 2)
    assert clip.state["sizes"].shape == clip.state["kinds"].shape == (count,)
    assert clip.actions is None
    assert len(set(clip.state["colours"])) == count  # one colour per shape, so colours identify shapes


@pytest.mark.parametrize("seed", range(12))
def test_shapes_caption_names_each_shape_and_its_direction(seed):
    clip = ShapesWorld().render(seed)
    state, clauses = clip.state, clip.caption.split(", ")
    assert len(clauses) == len(state["colours"])
    for clause, colour, kind, velocity, bounced in zip(
        clauses, state["colours"], state["kinds"], state["velocities"][0], state["bounced"], strict=True
    ):
        assert clause.startswith(f"a {colour} {kind} moves ")
        assert clause.endswith(" and bounces") == bool(bounced)
        words = clause.split(" ")[4].split("-")
        vx, vy = velocity
        speed = np.hypot(vx, vy)
        assert ("left" in words) == (vx < 0 and abs(vx) >= 0.38 * speed)
        assert ("right" in words) == (vx > 0 and abs(vx) >= 0.38 * speed)
        assert ("up" in words) == (vy < 0 and abs(vy) >= 0.38 * speed)
        assert ("down" in words) == (vy > 0 and abs(vy) >= 0.38 * speed)


def test_shapes_move_at_constant_velocity_between_bounces():
    bounces = 0
    for seed in range(20):
        state = ShapesWorld().render(seed).state
        steps = np.diff(state["positions"], axis=0)
        velocity = state["velocities"][:-1]
        unchanged = state["velocities"][1:] == velocity
        # Between frames without a bounce the shape moves by exactly its velocity...
        np.testing.assert_allclose(steps[unchanged], velocity[unchanged], atol=1e-3)
        # ...and across a bounce by less, as it travels back part of the step.
        assert np.all(np.abs(steps[~unchanged]) <= np.abs(velocity[~unchanged]) + 1e-3)
        bounces += int((~unchanged).sum())
    assert bounces > 0


@settings(max_examples=25, deadline=None)
@given(seed=SEEDS, height=st.integers(16, 48), width=st.integers(16, 48), num_frames=st.integers(1, 6))
def test_shapes_stay_inside_and_topmost_shape_shows_at_its_centre(seed, height, width, num_frames):
    config = ShapesConfig(height=height, width=width, num_frames=num_frames)
    clip = ShapesWorld(config).render(seed)
    assert clip.frames.shape == (num_frames, height, width, 3)
    np.testing.assert_array_equal(clip.frames, ShapesWorld(config).render(seed).frames)
    positions, sizes = clip.state["positions"], clip.state["sizes"]
    for index, kind in enumerate(clip.state["kinds"]):
        up, down = sizes[index] * np.array({"triangle": (4 / 3, 2 / 3)}.get(kind, (1, 1)))
        x, y = positions[:, index, 0], positions[:, index, 1]
        assert np.all(x - sizes[index] >= -1e-4) and np.all(x + sizes[index] <= width + 1e-4)
        assert np.all(y - up >= -1e-4) and np.all(y + down <= height + 1e-4)
    top = len(sizes) - 1  # drawn last, so nothing hides its centre
    colour = PALETTE[clip.state["colours"][top]]
    for frame, (x, y) in zip(clip.frames, positions[:, top], strict=True):
        assert tuple(frame[int(y), int(x)]) == colour


def test_detector_recovers_centres_and_kinds_of_unoccluded_shapes():
    world = ShapesWorld(ShapesConfig(height=64, width=64, num_frames=4))
    checked = 0
    for seed in range(25):
        clip = world.render(seed)
        state = clip.state
        reach = state["sizes"] * np.array([REACH[kind] for kind in state["kinds"]])
        for frame, positions in zip(clip.frames, state["positions"], strict=True):
            gaps = np.linalg.norm(positions[:, None] - positions[None], axis=-1) - reach[:, None] - reach[None]
            if np.any(gaps[~np.eye(len(reach), dtype=bool)] <= 1):
                continue  # overlapping shapes: the hidden one's visible part moves its centroid
            found = {detection.colour: detection for detection in detect_shapes(frame)}
            assert set(found) == set(state["colours"])
            for colour, kind, position in zip(state["colours"], state["kinds"], positions, strict=True):
                assert found[colour].kind == kind
                np.testing.assert_allclose(found[colour].centre, position, atol=0.5)
                checked += 1
    assert checked > 50


def test_detector_tolerates_noise_like_a_decoder_adds():
    clip = ShapesWorld(ShapesConfig(min_shapes=1, max_shapes=1, num_frames=3)).render(11)
    noisy = np.clip(clip.frames.astype(np.float32) + np.random.default_rng(0).normal(0, 12, clip.frames.shape), 0, 255)
    for frame, position in zip(noisy.astype(np.uint8), clip.state["positions"][:, 0], strict=True):
        (detection,) = detect_shapes(frame)
        assert detection.colour == clip.state["colours"][0]
        np.testing.assert_allclose(detection.centre, position, atol=1.0)


def test_colour_mask_is_the_rendered_shape_and_labels_cover_the_palette():
    clip = ShapesWorld(ShapesConfig(min_shapes=1, max_shapes=1, num_frames=2)).render(5)
    colour = clip.state["colours"][0]
    mask = colour_mask(clip.frames[0], colour)
    assert np.array_equal(mask, np.all(clip.frames[0] == PALETTE[colour], axis=-1))
    labels = palette_labels(clip.frames[0])
    assert set(np.unique(labels)) == {list(PALETTE).index(colour), len(PALETTE)}  # the shape and the background
    assert (palette_labels(np.full((4, 4, 3), 128, np.uint8), tolerance=10) == -1).all()  # grey is nothing
    with pytest.raises(ValueError, match="unknown colour"):
        colour_mask(clip.frames[0], "purple")


def test_detector_finds_nothing_on_background_and_rejects_bad_shapes():
    assert detect_shapes(np.full((32, 32, 3), BACKGROUND, np.uint8)) == []
    with pytest.raises(ValueError, match="frame must be"):
        detect_shapes(np.zeros((32, 32), np.uint8))


def test_drive_same_seed_same_clip_and_actions_follow_config():
    config = DriveConfig(height=32, width=48, num_frames=8)
    first, again, other = DriveWorld(config).render(2), DriveWorld(config).render(2), DriveWorld(config).render(3)
    np.testing.assert_array_equal(first.frames, again.frames)
    np.testing.assert_array_equal(first.actions, again.actions)
    assert not np.array_equal(first.frames, other.frames)
    assert first.frames.dtype == np.uint8 and first.frames.shape == (8, 32, 48, 3)
    assert first.actions.dtype == np.float32 and first.actions.shape == (8, 2)
    assert np.all(np.abs(first.actions[:, 0]) <= config.max_yaw_change)
    assert np.all((first.actions[:, 1] >= config.min_speed) & (first.actions[:, 1] <= config.max_speed))


@settings(max_examples=15, deadline=None)
@given(
    seed=SEEDS,
    height=st.integers(16, 48),
    width=st.integers(16, 48),
    num_frames=st.integers(1, 5),
    yaw=st.floats(-0.1, 0.1),
    speed=st.floats(0, 20),
)
def test_drive_state_integrates_the_actions(seed, height, width, num_frames, yaw, speed):
    config = DriveConfig(height=height, width=width, num_frames=num_frames)
    clip = DriveWorld(config).render(seed, constant_actions(num_frames, yaw, speed))
    assert clip.frames.shape == (num_frames, height, width, 3) and clip.frames.dtype == np.uint8
    heading, position = clip.state["heading"], clip.state["position"]
    np.testing.assert_allclose(np.diff(heading), np.float32(yaw), atol=1e-5)
    step = np.diff(position, axis=0)
    np.testing.assert_allclose(np.linalg.norm(step, axis=1), np.float32(speed) / config.fps, atol=1e-3)
    if num_frames > 1 and speed > 0.1:
        direction = np.arctan2(step[:, 1], step[:, 0])
        np.testing.assert_allclose(np.cos(direction - heading[1:]), 1, atol=1e-4)  # it drives where it heads
    np.testing.assert_array_equal(clip.frames, DriveWorld(config).render(seed, clip.actions).frames)


@pytest.mark.parametrize("seed", range(4))
def test_left_and_right_turns_shift_the_view_in_opposite_directions(seed):
    config = DriveConfig(height=64, width=64, num_frames=5)
    world = DriveWorld(config)
    left = world.render(seed, constant_actions(5, 0.03, 8.0))
    right = world.render(seed, constant_actions(5, -0.03, 8.0))
    turned_left = estimate_yaw_change(left.frames[0], left.frames[4], config)
    turned_right = estimate_yaw_change(right.frames[0], right.frames[4], config)
    assert turned_left == pytest.approx(0.12, abs=0.03)
    assert turned_right == pytest.approx(-0.12, abs=0.03)
    # A left turn moves the scene (and the road's vanishing point) to the right.
    assert np.all(np.diff(left.state["vanishing_point_x"]) > 0)
    assert np.all(np.diff(right.state["vanishing_point_x"]) < 0)


@pytest.mark.parametrize("seed", range(3))
def test_driving_forward_brings_the_ground_toward_the_camera(seed):
    config = DriveConfig(height=128, width=128, num_frames=3)
    moving = DriveWorld(config).render(seed, constant_actions(3, 0.0, 8.0))
    parked = DriveWorld(config).render(seed, constant_actions(3, 0.0, 0.0))
    assert estimate_forward_motion(moving.frames[0], moving.frames[2], config) == pytest.approx(2.0, abs=0.6)
    assert estimate_forward_motion(parked.frames[0], parked.frames[2], config) == pytest.approx(0.0, abs=0.2)
    # The ground's pixels change as the car moves and stay put when it stands still.
    horizon = int(config.horizon_row)
    assert np.any(moving.frames[0, horizon + 2 :] != moving.frames[2, horizon + 2 :])
    np.testing.assert_array_equal(parked.frames[0], parked.frames[2])


def road_heading_errors(clip, config: DriveConfig) -> np.ndarray:
    """|estimated - true| heading relative to the road per frame (nan where the road was not found)."""
    estimates = np.array([estimate_road_heading(frame, config) for frame in clip.frames])
    return np.abs(estimates - road_heading(clip))


def road_heading(clip) -> np.ndarray:
    """The true heading relative to the road (north), rad, left positive."""
    return clip.state["heading"] - np.pi / 2


@settings(max_examples=30, deadline=None)
@given(seed=SEEDS, size=st.sampled_from([32, 48, 64]))
def test_road_heading_of_a_first_frame_is_within_a_few_pixels_worth(seed, size):
    # The first frame: the car on its lane, heading within 0.05 rad of the road; ~4 px / size of error.
    config = DriveConfig(height=size, width=size, num_frames=1)
    clip = DriveWorld(config).render(seed)
    assert road_heading_errors(clip, config)[0] < 5 / size


@pytest.mark.parametrize("size, tolerance", [(32, 0.1), (64, 0.03)])
def test_road_heading_follows_the_seeds_drives(size, tolerance):
    config = DriveConfig(height=size, width=size, num_frames=8, max_yaw_change=0.12)
    for seed in range(20):
        clip = DriveWorld(config).render(seed)
        errors = road_heading_errors(clip, config)
        # The road is lost only where a hard turn has taken it to the edge of the 90-degree view.
        assert np.all(np.abs(road_heading(clip)[np.isnan(errors)]) > 0.5)
        assert np.nanmedian(errors) < tolerance


@pytest.mark.parametrize("seed", range(4))
def test_road_heading_measures_left_and_right_turns_and_tolerates_noise(seed):
    config = DriveConfig(height=64, width=64, num_frames=5)
    rng = np.random.default_rng(seed)
    for yaw in (0.1, -0.1):
        frames = DriveWorld(config).render(seed, constant_actions(5, yaw, 6.0)).frames
        turned = estimate_road_heading(frames[4], config) - estimate_road_heading(frames[0], config)
        assert turned == pytest.approx(4 * yaw, abs=0.05)
        # Noise like a decoder adds moves the estimate little (pixels are blurred before they are classified).
        noisy = [np.clip(frame + rng.normal(0, 8, frame.shape), 0, 255).astype(np.uint8) for frame in frames[[0, 4]]]
        noisy_turn = estimate_road_heading(noisy[1], config) - estimate_road_heading(noisy[0], config)
        assert noisy_turn == pytest.approx(4 * yaw, abs=0.1)


def test_road_heading_is_nan_without_a_road_and_refuses_a_wrong_frame():
    config = DriveConfig(height=32, width=32, num_frames=1)
    frame = DriveWorld(config).render(0).frames[0].copy()
    assert np.isfinite(estimate_road_heading(frame, config))
    frame[int(config.horizon_row) :] = (70, 135, 55)  # grass to the horizon
    assert np.isnan(estimate_road_heading(frame, config))
    with pytest.raises(ValueError, match="frame must be"):
        estimate_road_heading(frame[:, :16], config)


def test_drive_rejects_actions_of_the_wrong_shape():
    with pytest.raises(ValueError, match="actions must be"):
        DriveWorld(DriveConfig(num_frames=4)).render(0, np.zeros((3, 2)))


def test_datasets_return_contract_samples_that_collate():
    shapes = ShapesDataset(ShapesConfig(height=32, width=32, num_frames=4), seeds=range(10, 13))
    drive = DriveDataset(DriveConfig(height=32, width=32, num_frames=4), seeds=eval_seeds(2))
    assert len(shapes) == 3 and len(drive) == 2
    sample = shapes[1]
    assert sample["frames"].dtype == torch.uint8 and sample["frames"].shape == (4, 32, 32, 3)
    assert sample["actions"] is None and sample["is_image"] is False and isinstance(sample["caption"], str)
    assert sample["meta"]["seed"] == 11 and "positions" in sample["meta"]["state"]
    np.testing.assert_array_equal(sample["frames"].numpy(), ShapesWorld(shapes.world.config).render(11).frames)
    batch = collate_samples([drive[0], drive[1]])
    assert batch["frames"].shape == (2, 4, 32, 32, 3)
    assert batch["actions"].dtype == torch.float32 and batch["actions"].shape == (2, 4, 2)
    assert drive[1]["meta"]["seed"] == EVAL_SEED_START + 1


def test_evaluation_seeds_never_overlap_training_seeds_and_bad_input_is_refused():
    assert eval_seeds(5)[0] > TRAIN_SEEDS[-1]
    with pytest.raises(ValueError, match="seed"):
        ShapesWorld().render(-1)
    with pytest.raises(ValueError, match="max_shapes"):
        ShapesConfig(max_shapes=len(PALETTE) + 1)
    with pytest.raises(ValueError, match="horizon"):
        DriveConfig(horizon=0.95)
    with pytest.raises(ValueError, match="fps"):
        DriveConfig(fps=0)
    assert set(KINDS) == {"circle", "square", "triangle"}
