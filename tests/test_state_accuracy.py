"""Anti-UAV state accuracy against a hand computation on a constructed single-target sequence."""

import numpy as np
import pytest

from csfnet.detect.track_metrics import single_target_state, state_accuracy


def box(x, y, w=10, h=10):
    return np.array([x, y, w, h], float)


def test_state_accuracy_scores_each_frame_as_anti_uav_defines_it():
    truth = [box(0, 0), box(0, 0), None, None, box(20, 20), box(40, 40)]
    predicted = [
        box(0, 0),  # visible, exact: IoU 1
        box(5, 0),  # visible, shifted half a width: overlap 50 / union 150 = 1/3
        None,  # absent and silent: 1
        box(1, 1),  # absent but a box: 0
        None,  # visible but missed: 0 (a miss)
        box(60, 60),  # visible, no overlap: 0 (not a miss: something was predicted)
    ]
    result = state_accuracy(truth, predicted)
    sa = (1 + 1 / 3 + 1 + 0 + 0 + 0) / 6
    assert result["SA"] == pytest.approx(sa)
    assert result["miss_rate"] == pytest.approx(1 / 4)  # one of four visible frames predicted absent
    assert result["SA_penalised"] == pytest.approx(sa - 0.2 * 0.25**0.3)
    assert (result["frames"], result["visible_frames"]) == (6, 4)


def test_all_absent_and_silent_is_perfect_and_lengths_must_match():
    assert state_accuracy([None] * 3, [None] * 3)["SA"] == 1.0
    assert state_accuracy([None] * 3, [None] * 3)["SA_penalised"] == 1.0
    with pytest.raises(ValueError, match="one prediction per frame"):
        state_accuracy([None] * 3, [None] * 2)


def test_single_target_state_is_the_highest_scoring_box_or_absent():
    rows = np.array([[0, 0, 10, 10, 0.4, 0, 1], [50, 50, 60, 62, 0.9, 0, 2]])  # x1, y1, x2, y2, score, class, id
    assert single_target_state(rows) == [50, 50, 10, 12]
    assert single_target_state(np.zeros((0, 7))) is None
