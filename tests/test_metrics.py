"""The exporter over real HTTP: values scraped from /metrics equal sums over the event stream."""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from collections import Counter

import pytest
from event_samples import sample_events
from prometheus_client.parser import text_string_to_metric_families

from tierflow.orchestrator.errors import TierflowError
from tierflow.orchestrator.event_types import RoundEnd
from tierflow.orchestrator.metrics import MAX_SPLIT_SERIES, MetricsExporter, split_label


def scrape(exporter: MetricsExporter) -> dict[tuple[str, frozenset], float]:
    with urllib.request.urlopen(exporter.url, timeout=5) as resp:
        assert resp.status == 200
        text = resp.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples, name, **labels) -> float:
    return samples[(name, frozenset(labels.items()))]


def names(samples) -> set[str]:
    return {n for n, _ in samples}


def one_round(**fields) -> RoundEnd:
    """A round_end of round 1 with nothing in it but ``fields``."""
    base = {"round": 1, "wall_time_s": 1.0, "virtual_time_s": 1.0, "duration_s": 1.0, "accuracy": 0.5, "loss": 1.0,
            "train_loss": 1.0, "bytes": {}, "compute_s": {}, "wall_compute_s": {}, "devices_per_edge": {},
            "devices_per_ring": {}, "splits": {}, "samples": 1, "failures": 0, "predicted_s": 1.0, "charged_s": 1.0}
    return RoundEnd(**{**base, **fields})


@pytest.fixture
def exporter():
    m = MetricsExporter("127.0.0.1:0", strict=True).start()
    yield m
    m.stop()


def test_scraped_values_match_the_event_stream(exporter):
    events = sample_events(rounds=8)
    for e in events:
        exporter.observe(e)
    assert exporter.port != 0
    got = scrape(exporter)
    rounds = [e for e in events if e["event"] == "round_end"]
    last = rounds[-1]

    assert value(got, "tierflow_round") == 8
    assert value(got, "tierflow_accuracy_ratio") == pytest.approx(events[-1]["final_accuracy"])
    assert value(got, "tierflow_loss") == pytest.approx(last["loss"])
    assert value(got, "tierflow_train_loss") == pytest.approx(last["train_loss"])
    assert value(got, "tierflow_virtual_time_seconds") == pytest.approx(events[-1]["virtual_time_s"])
    assert value(got, "tierflow_wall_time_seconds") == pytest.approx(events[-1]["wall_time_s"])
    assert value(got, "tierflow_samples_total") == sum(r["samples"] for r in rounds)
    assert value(got, "tierflow_run_running") == 0
    assert value(got, "tierflow_run_devices") == 6
    assert value(got, "tierflow_run_info", scenario="sample-city", time_mode="emulated", policy="migrate") == 1

    for tier in ("device", "edge", "cloud"):
        want = sum(r["compute_s"][tier] for r in rounds)
        assert value(got, "tierflow_compute_seconds_total", tier=tier) == pytest.approx(want)
    for link in ("device-edge", "edge-cloud"):
        for direction in ("up", "down"):
            want = sum(r["bytes"][link][direction] for r in rounds)
            assert value(got, "tierflow_link_bytes_total", link=link, direction=direction) == want

    assert value(got, "tierflow_round_duration_seconds_count") == 8
    assert value(got, "tierflow_round_duration_seconds_sum") == pytest.approx(sum(r["duration_s"] for r in rounds))
    assert value(got, "tierflow_round_duration_seconds_bucket", le="+Inf") == 8
    assert value(got, "tierflow_round_duration_seconds_bucket", le="1800.0") == 8

    for edge, n in last["devices_per_edge"].items():
        assert value(got, "tierflow_edge_devices", edge=edge) == n
    for ring, n in last["devices_per_ring"].items():
        assert value(got, "tierflow_ring_devices", ring=ring) == n
    want_splits = Counter(split_label(s) for s in last["splits"].values())
    got_splits = {dict(k[1])["split"]: v for k, v in got.items() if k[0] == "tierflow_placement_devices"}
    assert got_splits == want_splits
    n_dev = len(last["splits"])
    for i, tier in enumerate(("device", "edge", "cloud")):
        want = sum(s[i] for s in last["splits"].values()) / n_dev
        assert value(got, "tierflow_placement_mean_nodes", tier=tier) == pytest.approx(want)

    handovers = [e for e in events if e["event"] == "handover"]
    migrations = [e for e in events if e["event"] == "migration"]
    assert value(got, "tierflow_handovers_total") == len(handovers)
    assert value(got, "tierflow_migrations_total", policy="migrate", ok="true") == sum(m["ok"] for m in migrations)
    assert value(got, "tierflow_migrations_total", policy="migrate", ok="false") == sum(
        not m["ok"] for m in migrations
    )
    assert value(got, "tierflow_migration_bytes_total", policy="migrate") == sum(m["bytes"] for m in migrations)
    assert value(got, "tierflow_migration_duration_seconds_count", policy="migrate") == len(migrations)
    assert value(got, "tierflow_migration_duration_seconds_bucket", policy="migrate", le="0.001") == 0
    assert value(got, "tierflow_migration_duration_seconds_bucket", policy="migrate", le="0.25") == len(migrations)

    passes = [e for e in events if e["event"] == "ring_pass"]
    assert value(got, "tierflow_ring_passes_total", ok="true") == sum(x["ok"] for x in passes) > 0
    assert value(got, "tierflow_ring_passes_total", ok="false") == sum(not x["ok"] for x in passes) > 0
    assert value(got, "tierflow_ring_pass_bytes_total") == sum(x["bytes"] for x in passes)

    kinds = Counter(e["kind"] for e in events if e["event"] == "failure")
    assert kinds.keys() == {"device", "migration", "poisoned_update", "ring_pass"}
    for kind, n in kinds.items():
        assert value(got, "tierflow_failures_total", kind=kind) == n
    replans = [e for e in events if e["event"] == "replan"]
    assert value(got, "tierflow_replans_total") == len(replans)
    assert value(got, "tierflow_replan_changed_devices_total") == sum(r["changed"] for r in replans)


def test_every_name_is_prefixed_and_no_device_label_by_default(exporter):
    for e in sample_events():
        exporter.observe(e)
    got = scrape(exporter)
    assert all(n.startswith("tierflow_") for n in names(got))
    assert not any("device" in dict(labels) for _, labels in got)
    # Cardinality: the largest labelled metric stays small.
    per_metric = Counter(n for n, _ in got)
    assert max(per_metric.values()) <= 60


def test_per_device_labels_when_asked():
    m = MetricsExporter("127.0.0.1:0", per_device_labels=True, strict=True).start()
    try:
        events = sample_events(devices=4)
        for e in events:
            m.observe(e)
        got = scrape(m)
        last = [e for e in events if e["event"] == "round_end"][-1]
        for device, split in last["splits"].items():
            for i, tier in enumerate(("device", "edge", "cloud")):
                assert value(got, "tierflow_device_nodes", device=device, tier=tier) == split[i]
        movers = Counter(e["device"] for e in events if e["event"] == "handover")
        for device, n in movers.items():
            assert value(got, "tierflow_device_handovers_total", device=device) == n
    finally:
        m.stop()


def test_two_exporters_side_by_side_have_their_own_registries():
    a = MetricsExporter("127.0.0.1:0", strict=True).start()
    b = MetricsExporter("127.0.0.1:0", strict=True).start()
    try:
        assert a.port != b.port
        for e in sample_events(rounds=3):
            a.observe(e)
        for e in sample_events(rounds=5):
            b.observe(e)
        assert value(scrape(a), "tierflow_round") == 3
        assert value(scrape(b), "tierflow_round") == 5
    finally:
        a.stop()
        b.stop()


def test_stop_closes_the_port():
    m = MetricsExporter("127.0.0.1:0").start()
    url = m.url
    m.stop()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url, timeout=2)


def test_unknown_events_are_ignored(exporter):
    exporter.observe({"event": "checkpoint_saved", "round": 2, "path": "/x"})
    exporter.observe({"no_event_key": True})
    exporter.observe({**one_round(samples=10).to_dict(), "future_field": [1, 2]})
    got = scrape(exporter)
    assert value(got, "tierflow_round") == 1
    assert not any("checkpoint" in n for n in names(got))


def test_malformed_event_is_counted_not_raised_unless_strict():
    lenient = MetricsExporter("127.0.0.1:0").start()
    try:
        lenient.observe({"event": "round_end", "round": 1})  # most keys missing
        lenient.observe({"event": "migration", "policy": "migrate", "ok": True, "bytes": "lots"})
        got = scrape(lenient)
        assert value(got, "tierflow_exporter_bad_events_total", event="round_end") == 1
        assert value(got, "tierflow_exporter_bad_events_total", event="migration") == 1
        # A malformed round changes nothing.
        assert value(got, "tierflow_round") == 0
        assert value(got, "tierflow_round_duration_seconds_count") == 0
    finally:
        lenient.stop()
    strict = MetricsExporter("127.0.0.1:0", strict=True)
    with pytest.raises(TierflowError, match="round_end lacks 'wall_time_s'"):
        strict.observe({"event": "round_end", "round": 1})


def test_gauges_follow_the_latest_round_and_reset_on_a_new_run(exporter):
    events = sample_events(rounds=2, edges=("e1", "e2"), devices=4)
    for e in events:
        exporter.observe(e)
    r = dict(events[-2])
    assert r["event"] == "round_end"
    # Round 3: everyone on e1, one ring, one split.
    exporter.observe({**r, "round": 3, "devices_per_edge": {"e1": 4}, "devices_per_ring": {"7": 4},
                      "splits": {f"dev-{i}": [4, 5, 0] for i in range(4)}})
    got = scrape(exporter)
    assert value(got, "tierflow_edge_devices", edge="e2") == 0  # known edge drops to zero
    assert {dict(k[1])["ring"] for k in got if k[0] == "tierflow_ring_devices"} == {"7"}  # old rings gone
    assert {dict(k[1])["split"] for k in got if k[0] == "tierflow_placement_devices"} == {"d4_e5_c0"}

    exporter.observe({"event": "run_start", "wall_time_s": 0.0, "virtual_time_s": 0.0, "time_mode": "real",
                      "scenario": "second", "devices": 2, "edges": ["x"], "policy": "restart"})
    got = scrape(exporter)
    assert {dict(k[1])["edge"] for k in got if k[0] == "tierflow_edge_devices"} == {"x"}
    assert not any(k[0] in ("tierflow_ring_devices", "tierflow_placement_devices") for k in got)
    assert value(got, "tierflow_virtual_time_seconds") == 0
    assert value(got, "tierflow_round") == 0
    assert value(got, "tierflow_run_running") == 1
    assert value(got, "tierflow_run_info", scenario="second", time_mode="real", policy="restart") == 1


def test_split_series_are_capped():
    m = MetricsExporter("127.0.0.1:0", strict=True)
    splits = {f"dev-{i}": [i, 200 - i, 0] for i in range(MAX_SPLIT_SERIES + 30)}
    m.observe(one_round(splits=splits).to_dict())
    series = {
        s.labels["split"]: s.value
        for f in m.registry.collect() if f.name == "tierflow_placement_devices" for s in f.samples
    }
    assert len(series) == MAX_SPLIT_SERIES
    assert sum(series.values()) == len(splits)
    assert series["other"] == 31


def test_out_of_order_events_do_not_move_clocks_backwards(exporter):
    for e in sample_events(rounds=3):
        exporter.observe(e)
    before = value(scrape(exporter), "tierflow_virtual_time_seconds")
    exporter.observe({"event": "failure", "round": 1, "virtual_time_s": 0.5, "kind": "edge", "entity": "e",
                      "detail": "late report"})
    assert value(scrape(exporter), "tierflow_virtual_time_seconds") == before


def test_bad_address():
    with pytest.raises(TierflowError, match="HOST:PORT"):
        MetricsExporter("localhost")


def test_busy_port_is_a_clear_error(exporter):
    with pytest.raises(TierflowError, match=f"127.0.0.1:{exporter.port}: cannot listen"):
        MetricsExporter(f"127.0.0.1:{exporter.port}").start()


def test_stop_waits_for_a_scrape_of_the_final_values():
    m = MetricsExporter("127.0.0.1:0", strict=True).start()
    events = sample_events(rounds=2)
    for e in events[:-1]:
        m.observe(e)
    scrape(m)  # a scraper is watching
    m.observe(events[-1])  # run_end, not yet scraped
    seen = {}

    def late_scrape():
        time.sleep(0.5)
        seen.update(scrape(m))

    t = threading.Thread(target=late_scrape)
    t.start()
    t0 = time.monotonic()
    m.stop(wait_for_scrape_s=10)
    waited = time.monotonic() - t0
    t.join()
    assert 0.4 < waited < 5
    assert value(seen, "tierflow_run_running") == 0


def test_stop_does_not_wait_when_nobody_scrapes():
    m = MetricsExporter("127.0.0.1:0", strict=True).start()
    for e in sample_events(rounds=1):
        m.observe(e)
    t0 = time.monotonic()
    m.stop(wait_for_scrape_s=10)
    assert time.monotonic() - t0 < 2
