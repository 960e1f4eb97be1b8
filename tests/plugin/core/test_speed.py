"""How long a job will take: the device prior, corrected by what was measured (core/speed.py)."""

from __future__ import annotations

import pytest

from segearth_qgis.core.speed import (
    MAX_LOAD_FACTOR,
    PRIOR_SECONDS_PER_MEGAPIXEL,
    PRIOR_WEIGHT_MEGAPIXELS,
    SPEED_RANGE_FACTORS,
    STARTUP_RANGE_SECONDS,
    STARTUP_SECONDS,
    SpeedRecord,
    cpu_load,
    device_key,
    estimate_range,
    estimate_seconds,
    format_duration,
    format_estimate,
    records_from_json,
    records_to_json,
    seconds_per_megapixel,
)


def test_the_device_key_names_the_device_type_and_the_model():
    assert device_key({"device": {"type": "cuda", "name": "A100"}, "model": "ViT-B-16"}) == "cuda/ViT-B-16"
    assert device_key(None) == "cpu/?" and device_key({}) == "cpu/?"


def test_without_measurements_the_prior_of_the_device_kind_is_used():
    assert seconds_per_megapixel("cuda/x", None) == PRIOR_SECONDS_PER_MEGAPIXEL["cuda"]
    assert seconds_per_megapixel("tpu/x", None) == PRIOR_SECONDS_PER_MEGAPIXEL["cpu"]  # unknown: the slow prior


def test_measurements_pull_the_estimate_in_proportion_to_their_megapixels():
    small = SpeedRecord().add(1.0, 0.01)  # a tiny job: fixed costs dominate, the prior barely moves
    large = SpeedRecord().add(50.0, 100.0)  # 0.5 s/MP measured on a large job
    prior = PRIOR_SECONDS_PER_MEGAPIXEL["cpu"]
    assert seconds_per_megapixel("cpu/m", small) == pytest.approx((prior * PRIOR_WEIGHT_MEGAPIXELS + 1.0)
                                                                  / (PRIOR_WEIGHT_MEGAPIXELS + 0.01))
    assert abs(seconds_per_megapixel("cpu/m", small) - prior) < abs(seconds_per_megapixel("cpu/m", large) - prior)
    assert seconds_per_megapixel("cpu/m", large) == pytest.approx(0.5, rel=0.2)


def test_empty_measurements_are_ignored_and_totals_add_up():
    record = SpeedRecord().add(0.0, 1.0).add(2.0, -1.0)
    assert record == SpeedRecord()
    assert SpeedRecord().add(2.0, 1.0).add(4.0, 3.0) == SpeedRecord(6.0, 4.0)


def test_the_estimate_adds_the_start_up_only_when_no_backend_runs():
    running = estimate_seconds(2.0, "cuda/x", None, backend_running=True)
    assert running == pytest.approx(2.0 * PRIOR_SECONDS_PER_MEGAPIXEL["cuda"])
    assert estimate_seconds(2.0, "cuda/x", None, backend_running=False) == pytest.approx(running + STARTUP_SECONDS)


def test_the_estimate_is_a_range_that_holds_the_start_and_a_busy_cpu():
    work = 2.0 * PRIOR_SECONDS_PER_MEGAPIXEL["cpu"]
    low, high = estimate_range(2.0, "cpu/x", None, backend_running=True)
    assert (low, high) == pytest.approx((work * SPEED_RANGE_FACTORS[0], work * SPEED_RANGE_FACTORS[1]))
    starting = estimate_range(2.0, "cpu/x", None, backend_running=False)
    assert starting == pytest.approx((low + STARTUP_RANGE_SECONDS[0], high + STARTUP_RANGE_SECONDS[1]))
    busy = estimate_range(2.0, "cpu/x", None, backend_running=True, load=3.0)  # 3 runnable processes per core
    assert busy == pytest.approx((low, high * 3.0))
    assert estimate_range(2.0, "cpu/x", None, True, load=40.0)[1] == pytest.approx(high * MAX_LOAD_FACTOR)
    assert estimate_range(2.0, "cuda/x", None, True, load=3.0)[1] == pytest.approx(
        2.0 * PRIOR_SECONDS_PER_MEGAPIXEL["cuda"] * SPEED_RANGE_FACTORS[1])  # a GPU does not wait for the CPU
    # The walkthrough: "about 35 s" for a run of 62 s (20 s of it the start); the range holds it.
    low, high = estimate_range(1.0, "cpu/x", None, backend_running=False)
    assert low <= 62 <= high
    assert format_estimate(22, 76) == "estimate 22 s to 1 min 16 s" and format_estimate(12.2, 12.4) == "estimate 12 s"
    assert cpu_load() >= 0


def test_records_survive_json_and_unreadable_entries_are_skipped():
    records = {"cpu/a": SpeedRecord(12.3456789, 1.23456789)}
    assert records_from_json(records_to_json(records)) == {"cpu/a": SpeedRecord(12.346, 1.234568)}
    assert records_from_json({"cpu/b": "junk", "cpu/c": [1], "cpu/d": [2, 3]}) == {"cpu/d": SpeedRecord(2.0, 3.0)}


@pytest.mark.parametrize("seconds, text", [(-1, "0.0 s"), (8.04, "8.0 s"), (12.4, "12 s"), (200, "3 min 20 s"),
                                           (120, "2 min"), (7500, "2 h 5 min")])
def test_durations_read_like_a_person_says_them(seconds, text):
    assert format_duration(seconds) == text
