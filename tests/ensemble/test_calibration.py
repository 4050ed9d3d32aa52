"""Platt scaling, reliability bins and the expected calibration error."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ensemble.calibration import (
    Bin,
    Coverage,
    Platt,
    abstains,
    coverage_at,
    expected_calibration_error,
    fit_platt,
    reliability,
)


def test_platt_is_a_sigmoid_and_never_overflows() -> None:
    platt = Platt(a=2.0, b=-1.0)
    assert platt(0.5) == pytest.approx(0.5)
    assert platt(1.0) == pytest.approx(1.0 / (1.0 + math.exp(-1.0)))
    assert platt(1e6) == 1.0
    assert platt(-1e6) == 0.0


def test_platt_round_trips_through_a_dict() -> None:
    platt = Platt(a=3.25, b=-0.5)
    assert platt.to_dict() == {"a": 3.25, "b": -0.5}
    assert Platt.from_dict(platt.to_dict()) == platt
    assert Platt.from_dict({"a": 1, "b": 0}) == Platt(1.0, 0.0)


@pytest.mark.parametrize("data, key", [({"b": 0.0}, "'a'"), ({"a": 1.0}, "'b'"), ({"a": "x", "b": 0}, "'a'"),
                                       ({"a": 1.0, "b": float("nan")}, "'b'"), ({"a": True, "b": 0}, "'a'")])
def test_platt_from_dict_names_the_bad_key(data: dict, key: str) -> None:
    with pytest.raises(ValueError, match=key):
        Platt.from_dict(data)


def test_platt_from_dict_rejects_a_non_mapping() -> None:
    with pytest.raises(ValueError, match="mapping"):
        Platt.from_dict([1.0, 2.0])  # type: ignore[arg-type]


def test_fit_platt_recovers_the_generating_parameters() -> None:
    rng = np.random.default_rng(0)
    raw = rng.uniform(0.0, 1.0, 20_000)
    truth = Platt(a=6.0, b=-3.0)
    correct = rng.uniform(size=raw.size) < np.array([truth(r) for r in raw])
    fitted = fit_platt(raw.tolist(), correct.tolist())
    assert fitted.a == pytest.approx(6.0, abs=0.3)
    assert fitted.b == pytest.approx(-3.0, abs=0.2)


def test_fit_platt_on_separable_data_stays_finite_and_ordered() -> None:
    raw = [0.1, 0.2, 0.3, 0.7, 0.8, 0.9]
    fitted = fit_platt(raw, [False, False, False, True, True, True])
    assert math.isfinite(fitted.a) and math.isfinite(fitted.b)
    assert fitted.a > 0
    assert fitted(0.1) < 0.5 < fitted(0.9)


@pytest.mark.parametrize("label", [True, False])
def test_fit_platt_on_one_class_stays_finite(label: bool) -> None:
    fitted = fit_platt([0.2, 0.5, 0.9], [label] * 3)
    assert math.isfinite(fitted.a) and math.isfinite(fitted.b)
    assert (fitted(0.5) > 0.5) is label


def test_fit_platt_on_a_constant_score_is_the_base_rate() -> None:
    fitted = fit_platt([0.4] * 10, [True] * 7 + [False] * 3)
    assert fitted(0.4) == pytest.approx(0.7, abs=0.05)


def test_fit_platt_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="at least one"):
        fit_platt([], [])
    with pytest.raises(ValueError, match="length"):
        fit_platt([0.1, 0.2], [True])
    with pytest.raises(ValueError, match="finite"):
        fit_platt([0.1, float("inf")], [True, False])


def test_reliability_bins_are_equal_width_and_one_falls_in_the_last() -> None:
    table = reliability([0.0, 0.05, 0.15, 0.95, 1.0], [False, True, True, True, False], bins=10)
    assert len(table) == 10
    assert table[0] == Bin(lower=0.0, upper=0.1, count=2, mean_confidence=0.025, accuracy=0.5)
    assert table[1].count == 1 and table[1].accuracy == 1.0
    assert table[9].count == 2 and table[9].mean_confidence == pytest.approx(0.975)
    assert table[9].upper == 1.0
    assert [b.count for b in table[2:9]] == [0] * 7
    assert all(b.mean_confidence == 0.0 and b.accuracy == 0.0 for b in table[2:9])


def test_reliability_rejects_out_of_range_confidences_and_bins() -> None:
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        reliability([1.2], [True])
    with pytest.raises(ValueError, match="bins"):
        reliability([0.5], [True], bins=0)


def test_ece_is_zero_when_perfectly_calibrated_and_weights_bins_by_count() -> None:
    # [0.7, 0.8): 10 answers at 0.75, 3 right -> |0.3 - 0.75| = 0.45;
    # [0.2, 0.3): 10 answers at 0.25, all right -> 0.75.
    conf = [0.75] * 10 + [0.25] * 10
    right = [True] * 3 + [False] * 7 + [True] * 10
    assert expected_calibration_error(conf, right) == pytest.approx(0.5 * 0.45 + 0.5 * 0.75)
    assert expected_calibration_error([0.75] * 4, [True, True, True, False]) == pytest.approx(0.0)
    assert expected_calibration_error([], []) == 0.0


def test_fitted_platt_lowers_the_ece_of_an_overconfident_score() -> None:
    rng = np.random.default_rng(1)
    raw = rng.uniform(0.5, 1.0, 5_000)
    correct = rng.uniform(size=raw.size) < (raw - 0.5)  # right half as often as the raw score claims
    platt = fit_platt(raw.tolist(), correct.tolist())
    before = expected_calibration_error(raw.tolist(), correct.tolist())
    after = expected_calibration_error([platt(r) for r in raw], correct.tolist())
    assert before > 0.3
    assert after < 0.05


def test_abstains_only_strictly_below_the_minimum() -> None:
    assert not abstains(0.2, None)
    assert abstains(0.49, 0.5)
    assert not abstains(0.5, 0.5)
    assert not abstains(0.0, 0.0)


def test_coverage_at_thresholds_keeps_the_confident_answers() -> None:
    conf = [0.1, 0.4, 0.6, 0.9]
    right = [False, False, True, True]
    table = coverage_at(conf, right, [0.0, 0.5, 0.95])
    assert table[0] == Coverage(min_confidence=0.0, answered=4, coverage=1.0, accuracy=0.5)
    assert table[1] == Coverage(min_confidence=0.5, answered=2, coverage=0.5, accuracy=1.0)
    assert table[2] == Coverage(min_confidence=0.95, answered=0, coverage=0.0, accuracy=None)
    assert coverage_at([], [], [0.5]) == [Coverage(0.5, 0, 0.0, None)]
