"""The motion cue: alignment cancels camera motion, a moving target stands out, defined fallbacks, one function for
a frame called alone and for a stream pushed through MotionBuffer."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from csfnet.errors import DataError, SettingsError
from csfnet.settings import Settings, load_settings
from csfnet.temporal import MotionBuffer, MotionSpec, motion_map, stack

H, W = 240, 320


def _scene(seed: int = 0) -> np.ndarray:
    """A static textured world (blurred noise, grey levels 0-255) larger than the frame, BGR."""
    rng = np.random.default_rng(seed)
    texture = cv2.resize(rng.uniform(0, 255, (150, 200)).astype(np.float32), (800, 600), interpolation=cv2.INTER_CUBIC)
    texture = np.clip(cv2.GaussianBlur(texture, (0, 0), 2), 0, 255).astype(np.uint8)
    return cv2.cvtColor(texture, cv2.COLOR_GRAY2BGR)


def _view(scene: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """The camera's frame with the view shifted by (dx, dy) px: a pure camera translation."""
    return scene[100 + dy : 100 + dy + H, 100 + dx : 100 + dx + W].copy()


@pytest.mark.parametrize("align", ["homography", "affine", "translation"])
def test_camera_translation_cancels_after_alignment(align):
    """Bound: after alignment the map's mean is below 1 (of 255) and 99 % of pixels are <= 4 (1 grey level), while
    the unaligned difference of the same frames averages above 50 (measured: mean <= 0.09, p99 <= 4; none: 133)."""
    scene = _scene()
    earlier, current = _view(scene, 0, 0), _view(scene, 6, -4)
    aligned = motion_map(current, [earlier], MotionSpec((1,), align, 320))[..., 0]
    unaligned = motion_map(current, [earlier], MotionSpec((1,), "none", 320))[..., 0]
    assert aligned.shape == (H, W) and aligned.dtype == np.uint8
    assert aligned.mean() < 1 and np.percentile(aligned, 99) <= 4, (aligned.mean(), np.percentile(aligned, 99))
    assert unaligned.mean() > 50
    # the strip the earlier frame does not cover is zeroed, not differenced against the warp's black border
    assert aligned[:, -6:].max() == 0 and aligned[:4, :].max() == 0  # current shows 6 px right, 4 px up


@pytest.mark.parametrize("align_size", [64, 128])
def test_estimated_at_a_smaller_size_still_cancels(align_size):
    """Estimated on 64 or 128 px copies of 320 px frames and refined at full size: mean < 1, p99 <= 8."""
    scene = _scene(1)
    earlier, current = _view(scene, 0, 0), _view(scene, -9, 5)
    aligned = motion_map(current, [earlier], MotionSpec((1,), "homography", align_size))[..., 0]
    assert aligned.mean() < 1 and np.percentile(aligned, 99) <= 8, (aligned.mean(), np.percentile(aligned, 99))


def _with_target(frame: np.ndarray, x: int, y: int) -> np.ndarray:
    out = frame.copy()
    out[y - 1 : y + 2, x - 1 : x + 2] = 20  # a dark 3 px target
    return out


def test_moving_target_peaks_at_its_position_under_camera_motion():
    scene = _scene(2)
    target, before = (150, 120), (141, 116)  # moved 9 px right and 4 down while the camera panned
    earlier = _with_target(_view(scene, 0, 0), *before)
    current = _with_target(_view(scene, 3, 2), *target)
    m = motion_map(current, [earlier], MotionSpec((1,), "homography", 320))[..., 0]
    x, y = target
    near = m[y - 2 : y + 3, x - 2 : x + 3]
    assert near.max() == m.max() and near.max() >= 128
    background = m.copy()
    background[y - 4 : y + 5, x - 4 : x + 5] = 0
    bx, by = before[0] - 3, before[1] - 2  # where the earlier target lands after alignment (its ghost)
    background[by - 4 : by + 5, bx - 4 : bx + 5] = 0
    assert background.max() < near.max() / 4


def test_fallbacks_give_zero_channels_never_a_crash():
    scene = _scene(3)
    frame = _view(scene, 0, 0)
    spec = MotionSpec((1, 3), "homography", 160)
    assert not motion_map(frame, [None, None], spec).any()  # first frames of a stream
    small = cv2.resize(frame, (W // 2, H // 2))
    assert not motion_map(frame, [small, small], spec).any()  # a cut to another size
    flat = np.full((H, W, 3), 128, np.uint8)
    assert not motion_map(flat, [flat, flat], spec).any()  # no texture: alignment fails, zeros (not a plain diff)
    mixed = motion_map(_with_target(_view(scene, 2, 0), 100, 100), [frame, None], spec)
    assert mixed[..., 0].max() >= 128 and not mixed[..., 1].any()  # one earlier frame missing, the other computed
    buffer = MotionBuffer(spec)
    first = buffer.push(frame)
    assert first.shape == (H, W, 2) and not first.any()
    assert not buffer.push(small).any()  # size change inside a stream


def test_buffer_over_a_sequence_equals_motion_map_per_frame():
    scene = _scene(4)
    rng = np.random.default_rng(0)
    path = np.cumsum(rng.integers(-3, 4, (8, 2)), axis=0)
    frames = [_with_target(_view(scene, 20 + int(dx), 20 + int(dy)), 60 + 7 * i, 50 + 3 * i) for i, (dx, dy) in
              enumerate(path)]  # fmt: skip
    spec = MotionSpec((1, 3), "homography", 160)
    buffer = MotionBuffer(spec)
    for i, frame in enumerate(frames):
        earlier = [frames[i - d] if i >= d else None for d in spec.offsets]
        pushed = buffer.push(frame)
        assert np.array_equal(pushed, motion_map(frame, earlier, spec)), i
        assert pushed[..., 0].any() == (i >= 1) and pushed[..., 1].any() == (i >= 3)
    assert np.array_equal(motion_map(frames[5], [frames[4], frames[2]], spec),
                          motion_map(frames[5], [frames[4], frames[2]], spec))  # deterministic  # fmt: skip


def test_stack_puts_colour_first_then_motion_in_offset_order():
    frame = np.zeros((4, 5, 3), np.uint8)
    motion = np.stack([np.full((4, 5), 1, np.uint8), np.full((4, 5), 3, np.uint8)], axis=2)
    stacked = stack(frame, motion)
    assert stacked.shape == (4, 5, 5) and stacked[0, 0].tolist() == [0, 0, 0, 1, 3]
    with pytest.raises(DataError, match="does not match"):
        stack(frame, motion[:2])


def test_spec_round_trips_and_comes_from_the_settings():
    spec = MotionSpec((1, 3), "affine", 256)
    assert spec.channels == 2 and MotionSpec.from_dict(spec.to_dict()) == spec
    assert spec.to_dict() == {"offsets": [1, 3], "align": "affine", "align_size": 256}
    assert MotionSpec.from_settings(Settings()) is None  # default: single-frame
    settings = Settings().override({"temporal.offsets": [1, 3], "temporal.align_size": 160})
    assert MotionSpec.from_settings(settings) == MotionSpec((1, 3), "homography", 160)
    for bad in (
        {"offsets": [3, 1], "align": "none", "align_size": 64},
        {"offsets": [1], "align": "x", "align_size": 64},
    ):
        with pytest.raises(DataError):
            MotionSpec.from_dict(bad)


@pytest.mark.parametrize(
    "text, message",
    [
        ("temporal: {offsets: [3, 1]}", "temporal.offsets: offsets must be unique and ascending, got [3, 1]"),
        ("temporal: {offsets: [1, 1]}", "unique and ascending"),
        ("temporal: {offsets: [0]}", "temporal.offsets.0: 0: Input should be greater than 0"),
        ("temporal: {align: optical}", "temporal.align: 'optical'"),
        ("temporal: {align_size: 16}", "temporal.align_size: 16: Input should be greater than or equal to 32"),
    ],
)
def test_temporal_settings_are_validated(text, message, tmp_path):
    (tmp_path / "params.yaml").write_text(text + "\n")
    with pytest.raises(SettingsError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_settings(tmp_path / "params.yaml")
