"""Detection metrics for label errors (detectors/ranking.py)."""

import numpy as np
import pytest

from boundary_cli.detectors.ranking import detection_area, detection_auroc, detection_curve, precision_at_noise


def test_curve_area_and_auroc_agree_with_the_closed_form_relation_and_planted_cases():
    rng = np.random.default_rng(0)
    n, p = 400, 0.1
    noisy = np.zeros(n, dtype=bool)
    noisy[rng.choice(n, int(n * p), replace=False)] = True
    scores = rng.normal(size=n) + 1.5 * noisy  # no ties
    auroc = detection_auroc(scores, noisy)
    assert detection_area(scores, noisy) == pytest.approx((1 - p) * auroc + p / 2 + 1 / (2 * n), abs=1e-12)
    perfect = noisy.astype(float)
    assert detection_auroc(perfect, noisy) == 1.0 and precision_at_noise(perfect, noisy) == 1.0
    curve = detection_curve(perfect, noisy)
    assert curve[int(n * p) - 1] == 1.0 and curve[0] == 1 / (n * p)
    # a hand case: 4 points, the noisy one ranked second
    assert detection_curve(np.array([3.0, 2.0, 1.0, 0.0]), np.array([False, True, False, False])).tolist() == \
        [0.0, 1.0, 1.0, 1.0]
    assert detection_auroc(np.array([3.0, 2.0, 1.0, 0.0]), np.array([False, True, False, False])) == \
        pytest.approx(2 / 3)
