"""Cohort sampling (``training.devices_per_round``): seeded per round, the same on resume, and a
round trains and averages exactly its cohort."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import yaml
from test_resume import SCENARIO

from tierflow.orchestrator.cohort import cohort_size, draw_cohort
from tierflow.orchestrator.errors import TierflowError
from tierflow.orchestrator.events import read_events
from tierflow.orchestrator.runner import Orchestrator, RunOptions, run_scenario
from tierflow.orchestrator.scenario import load_scenario, parse_scenario

DEVICES = [f"d{i}" for i in range(10)]


def test_a_cohort_is_seeded_by_round_and_drawn_from_those_available():
    a = draw_cohort(3, 7, 1, DEVICES)
    assert a == draw_cohort(3, 7, 1, reversed(DEVICES))  # the order devices are listed in does not matter
    assert len(a) == 3 and a <= set(DEVICES)
    assert len({draw_cohort(3, 7, r, DEVICES) for r in range(1, 30)}) > 10  # rounds draw different cohorts
    assert draw_cohort(3, 8, 1, DEVICES) != a or draw_cohort(3, 8, 2, DEVICES) != draw_cohort(3, 7, 2, DEVICES)
    assert draw_cohort(None, 7, 1, DEVICES) is None
    assert draw_cohort(3, 7, 1, DEVICES[:2]) == set(DEVICES[:2])  # fewer available than asked: all of them
    assert draw_cohort(5, 7, 1, []) == frozenset()


def test_a_fraction_rounds_up_and_keeps_at_least_one():
    assert [cohort_size(0.25, n) for n in (1, 4, 5, 10)] == [1, 1, 2, 3]
    assert cohort_size(1.0, 10) == 10 and cohort_size(0.01, 10) == 1 and cohort_size(0.5, 0) == 0


def test_every_device_is_drawn_about_equally_often():
    counts = dict.fromkeys(DEVICES, 0)
    for r in range(1, 2001):
        for d in draw_cohort(0.3, 0, r, DEVICES):
            counts[d] += 1
    assert all(abs(c - 600) < 90 for c in counts.values()), counts


@pytest.mark.parametrize("value", [0, -1, 4, 1.5, 0.0, "half", True, [1]])
def test_a_bad_devices_per_round_is_refused_naming_the_field(value):
    doc = copy.deepcopy(SCENARIO)
    doc["training"]["devices_per_round"] = value
    with pytest.raises(TierflowError, match=r"training\.devices_per_round: expected a whole number of devices "
                                            r"from 1 to 3, or a fraction in \(0, 1\]"):
        parse_scenario(doc, "cohort.yaml")


class Crash(Exception):
    pass


@pytest.mark.ray
def test_rounds_train_their_cohort_and_a_resumed_run_draws_the_same(ray_session, tmp_path):
    doc = copy.deepcopy(SCENARIO)
    doc["training"].update(rounds=4, devices_per_round=2)
    path = tmp_path / "cohort.yaml"
    path.write_text(yaml.safe_dump(doc))
    scenario = load_scenario(path)
    whole = run_scenario(scenario, RunOptions(out_dir=tmp_path / "whole", progress=False))
    rounds = [e for e in read_events(tmp_path / "whole" / "events.jsonl") if e["event"] == "round_end"]
    tr, periods = scenario.training, scenario.aggregation.cloud_every
    assert [e["cohort"] for e in rounds] == [2] * tr.rounds
    # Only the cohort trains: two devices' batches, every period of the round.
    assert all(e["samples"] == 2 * periods * tr.local_steps * tr.batch_size for e in rounds)

    def crash(event):
        if event["event"] == "round_end" and event["round"] == 3:
            raise Crash

    orch = Orchestrator(scenario, RunOptions(out_dir=tmp_path / "cut", progress=False, event_sinks=(crash,)))
    with pytest.raises(Crash):
        orch.run()
    orch.fleet.stop()
    resumed = run_scenario(scenario, RunOptions(out_dir=tmp_path / "cut", progress=False, resume=True))
    assert resumed["virtual_time_s"] == whole["virtual_time_s"]
    a = np.load(tmp_path / "whole" / "checkpoint" / "arrays.npz")
    b = np.load(tmp_path / "cut" / "checkpoint" / "arrays.npz")
    assert sorted(a.files) == sorted(b.files) and all(np.array_equal(a[k], b[k]) for k in a.files)
