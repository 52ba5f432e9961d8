"""The Prometheus exporter: metrics derived from the round loop's events, one source of truth.

The orchestrator writes each event to the run's ``events.jsonl`` and hands the same object to
:meth:`MetricsExporter.observe`, which reads it as its record (orchestrator/event_types.py: the
fields of every kind are there). Kinds this schema does not know are ignored; an event of a known
kind the schema refuses is counted in ``tierflow_exporter_bad_events_total``. Labels stay bounded
(edge, ring, tier, link, direction, policy, kind, split); per-device series exist only with
``per_device_labels=True``.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, start_http_server

from tierflow.migration.refusals import PORTS, REASONS
from tierflow.orchestrator import event_types as ev
from tierflow.orchestrator.errors import TierflowError
from tierflow.orchestrator.validate import split_host_port

log = logging.getLogger(__name__)

PREFIX = "tierflow_"

# Rounds take seconds (small models, emulated clocks) to many minutes (real devices).
ROUND_BUCKETS_S = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800)
# Migrations take milliseconds (loopback) to tens of seconds (a large session on a slow link).
MIGRATION_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

# Placement is reported as devices per split "d{n}_e{n}_c{n}". The number of distinct splits in
# use is small (the candidate set), but a cap keeps a pathological run bounded.
MAX_SPLIT_SERIES = 50
OTHER_SPLIT = "other"

TIERS = ("device", "edge", "cloud")


def split_label(split) -> str:
    """``[3, 5, 0]`` → ``"d3_e5_c0"``."""
    d, e, c = (int(x) for x in split)
    return f"d{d}_e{e}_c{c}"


class _ScrapeClock:
    """A collector that yields nothing and notes when a scrape happened."""

    def __init__(self) -> None:
        self.last = 0.0
        self.cond = threading.Condition()

    def describe(self) -> list:
        return []

    def collect(self) -> list:
        with self.cond:
            self.last = time.monotonic()
            self.cond.notify_all()
        return []


def parse_addr(addr: str) -> tuple[str, int]:
    """``HOST:PORT``; ``:PORT`` means loopback (metrics reveal the run: expose them only on purpose)."""
    return split_host_port(addr, f"metrics address {addr!r}")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve anywhere
        return False


class MetricsExporter:
    """Prometheus metrics for one orchestrator, fed by :meth:`observe`, served by :meth:`start`."""

    def __init__(
        self,
        addr: str = "127.0.0.1:9464",
        registry: CollectorRegistry | None = None,
        *,
        per_device_labels: bool = False,
        strict: bool = False,
    ) -> None:
        self.host, self.port = parse_addr(addr)
        if not is_loopback(self.host):
            log.warning("metrics exporter: binding %s, not loopback: anyone who can reach this address can read "
                        "the run's metrics (no authentication)", self.host)
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self.per_device_labels = per_device_labels
        # A metrics bug must not tear down a training run; tests pass strict=True to see it.
        self.strict = strict
        self._server = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._edges: set[str] = set()
        self._rings: set[str] = set()
        self._split_labels: set[str] = set()
        self._device_labels: set[str] = set()
        self._virtual_s = 0.0
        self._wall_s = 0.0
        self._last_event = 0.0
        self._scrapes = _ScrapeClock()
        self.registry.register(self._scrapes)

        r = self.registry
        p = PREFIX
        self.run_info = Info(f"{p}run", "The current run: scenario, time mode, policy.", registry=r)
        self.run_devices = Gauge(f"{p}run_devices", "Devices in the scenario.", registry=r)
        self.run_running = Gauge(f"{p}run_running", "1 while a run is in progress, else 0.", registry=r)
        self.round = Gauge(f"{p}round", "Last completed round (1-based).", registry=r)
        self.round_duration = Histogram(
            f"{p}round_duration_seconds", "Round duration in the run's clock.",
            buckets=ROUND_BUCKETS_S, registry=r,
        )
        self.accuracy = Gauge(f"{p}accuracy_ratio", "Evaluation accuracy after the last round.", registry=r)
        self.loss = Gauge(f"{p}loss", "Evaluation loss after the last round.", registry=r)
        self.train_loss = Gauge(f"{p}train_loss", "Mean training loss of the last round.", registry=r)
        self.compute = Counter(
            f"{p}compute_seconds", "Compute time summed over a tier's workers, in the run's clock.",
            ["tier"], registry=r,
        )
        self.link_bytes = Counter(
            f"{p}link_bytes", "Bytes moved per link and direction.", ["link", "direction"], registry=r
        )
        self.samples = Counter(f"{p}samples", "Training samples processed.", registry=r)
        self.edge_devices = Gauge(f"{p}edge_devices", "Devices attached to an edge server.", ["edge"], registry=r)
        self.ring_devices = Gauge(f"{p}ring_devices", "Devices in a capability ring.", ["ring"], registry=r)
        self.placement_devices = Gauge(
            f"{p}placement_devices", "Devices per split, labelled d<device nodes>_e<edge>_c<cloud>.",
            ["split"], registry=r,
        )
        self.placement_nodes = Gauge(
            f"{p}placement_mean_nodes", "Mean graph nodes placed on a tier, over devices.", ["tier"],
            registry=r,
        )
        self.handovers = Counter(f"{p}handovers", "Device handovers between edge servers.", registry=r)
        self.migrations = Counter(
            f"{p}migrations", "Session migrations (or restarts) after a handover.", ["policy", "ok"],
            registry=r,
        )
        self.migration_bytes = Counter(
            f"{p}migration_bytes", "Session bytes moved edge to edge.", ["policy"], registry=r
        )
        self.migration_duration = Histogram(
            f"{p}migration_duration_seconds", "Time to move a session edge to edge.", ["policy"],
            buckets=MIGRATION_BUCKETS_S, registry=r,
        )
        self.ring_passes = Counter(
            f"{p}ring_passes", "A ring's session passed edge to edge to its next member (not a handover).",
            ["ok"], registry=r,
        )
        self.ring_pass_bytes = Counter(f"{p}ring_pass_bytes", "Ring session bytes passed edge to edge.", registry=r)
        self.failures = Counter(f"{p}failures", "Failures by kind.", ["kind"], registry=r)
        self.replans = Counter(f"{p}replans", "Placement re-plans.", registry=r)
        self.replan_changes = Counter(
            f"{p}replan_changed_devices", "Devices whose placement a re-plan changed.", registry=r
        )
        self.virtual_time = Gauge(f"{p}virtual_time_seconds", "The run's emulated clock.", registry=r)
        self.wall_time = Gauge(f"{p}wall_time_seconds", "Wall-clock time since run start.", registry=r)
        self.refused = Counter(
            f"{p}refused_messages", "Messages a zmq port (data plane, migration) refused, by reason.",
            ["port", "reason"], registry=r,
        )
        self.bad_events = Counter(
            f"{p}exporter_bad_events", "Events the exporter could not read.", ["event"], registry=r
        )
        if per_device_labels:
            self.device_nodes = Gauge(
                f"{p}device_nodes", "Graph nodes placed on a tier for one device.", ["device", "tier"],
                registry=r,
            )
            self.device_handovers = Counter(
                f"{p}device_handovers", "Handovers of one device.", ["device"], registry=r
            )
        self._handlers = {
            ev.RunStart: self._run_start,
            ev.RoundEnd: self._round_end,
            ev.Handover: self._handover,
            ev.Migration: self._migration,
            ev.RingPass: self._ring_pass,
            ev.Failure: self._failure,
            ev.Replan: self._replan,
            ev.Refused: self._refused,
            ev.RunEnd: self._run_end,
        }

    # -- serving -----------------------------------------------------------------------------

    def start(self) -> MetricsExporter:
        """Serve ``/metrics`` on ``addr``; with port 0 the chosen port is in ``.port``."""
        if self._server is not None:
            return self
        try:
            self._server, self._thread = start_http_server(self.port, addr=self.host, registry=self.registry)
        except OSError as exc:
            raise TierflowError(f"metrics address {self.host}:{self.port}: cannot listen ({exc})") from exc
        self.port = self._server.server_port
        log.info("metrics exporter serving on http://%s:%d/metrics", self.host, self.port)
        return self

    def stop(self, wait_for_scrape_s: float = 0.0) -> None:
        """Stop serving. With ``wait_for_scrape_s``, first wait (at most that long) until a scraper
        has seen the last event, so a run's final values reach Prometheus; this only waits if
        something has scraped this exporter before."""
        if self._server is None:
            return
        if wait_for_scrape_s > 0:
            deadline = time.monotonic() + wait_for_scrape_s
            with self._scrapes.cond:
                while 0 < self._scrapes.last <= self._last_event and time.monotonic() < deadline:
                    self._scrapes.cond.wait(timeout=max(0.0, deadline - time.monotonic()))
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.port}/metrics"

    def __enter__(self) -> MetricsExporter:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- events ------------------------------------------------------------------------------

    def observe(self, event: Mapping | ev.EventRecord) -> None:
        """Update metrics from one event (its record, or the object the log holds); kinds the schema
        does not know are ignored."""
        kind = event.kind if isinstance(event, ev.EventRecord) else event.get("event")
        if not isinstance(kind, str) or kind not in ev.EVENT_TYPES:
            return
        self._last_event = time.monotonic()
        try:
            e = event if isinstance(event, ev.EventRecord) else ev.parse_event(event, "metrics: event")
            handler = self._handlers.get(type(e))
            if handler is None:
                return
            with self._lock:
                handler(e)
        except (ev.EventError, KeyError, TypeError, ValueError) as exc:
            if self.strict:
                raise
            self.bad_events.labels(event=kind).inc()
            log.warning("metrics: ignoring malformed %s event: %s", kind, exc)

    def _times(self, e: ev.Event) -> None:
        # Events from actors may arrive a little out of order; the clocks never run backwards
        # within a run (run_start resets them).
        self._virtual_s = max(self._virtual_s, float(e.virtual_time_s))
        self.virtual_time.set(self._virtual_s)
        wall = getattr(e, "wall_time_s", None)
        if wall is not None:
            self._wall_s = max(self._wall_s, float(wall))
            self.wall_time.set(self._wall_s)

    def _run_start(self, e: ev.RunStart) -> None:
        # Gauges describe the current run only; counters keep counting (rate() copes).
        for g, labels in ((self.edge_devices, self._edges), (self.ring_devices, self._rings),
                          (self.placement_devices, self._split_labels)):
            for lab in labels:
                g.remove(lab)
            labels.clear()
        if self.per_device_labels:
            self.device_nodes.clear()
            self._device_labels.clear()
        self.run_info.info({"scenario": e.scenario, "time_mode": e.time_mode, "policy": e.policy})
        self.run_devices.set(e.devices)
        self.run_running.set(1)
        self.round.set(0)
        self._virtual_s = self._wall_s = 0.0
        self._edges = set(e.edges)
        for edge in self._edges:
            self.edge_devices.labels(edge=edge).set(0)
        # Series that exist from the start at zero, so the first migration or failure is an increase
        # that rate() and increase() can see (a series born at 1 shows no change).
        for policy in ("migrate", "restart"):
            self.migration_duration.labels(policy=policy)
            self.migration_bytes.labels(policy=policy)
            for ok in ("true", "false"):
                self.migrations.labels(policy=policy, ok=ok)
        for ok in ("true", "false"):
            self.ring_passes.labels(ok=ok)
        for kind in ("device", "edge", "poisoned_update", "migration", "ring_pass"):
            self.failures.labels(kind=kind)
        for port in PORTS:
            for reason in REASONS:
                self.refused.labels(port=port, reason=reason)
        self._times(e)

    def _round_end(self, e: ev.RoundEnd) -> None:
        # Check first so a malformed event changes nothing (the schema has checked the types).
        splits = {d: tuple(s) for d, s in e.splits.items()}
        for d, s in splits.items():
            if len(s) != len(TIERS):
                raise ValueError(f"round_end: split of {d} has {len(s)} parts, expected {len(TIERS)}")
        increments = [e.samples, *e.compute_s.values(), *(n for dirs in e.bytes.values() for n in dirs.values())]
        if any(n < 0 for n in increments):  # a counter only counts up
            raise ValueError("round_end: a negative count of samples, compute seconds or bytes")
        self.round.set(e.round)
        self.round_duration.observe(e.duration_s)
        self.accuracy.set(e.accuracy)
        self.loss.set(e.loss)
        self.train_loss.set(e.train_loss)
        for link, dirs in e.bytes.items():
            for direction, n in dirs.items():
                self.link_bytes.labels(link=link, direction=direction).inc(n)
        for tier, s in e.compute_s.items():
            self.compute.labels(tier=tier).inc(s)
        self.samples.inc(e.samples)
        self._edges = self._set_all(self.edge_devices, self._edges, e.devices_per_edge, keep_known=True)
        self._rings = self._set_all(self.ring_devices, self._rings, e.devices_per_ring)
        self._placement(splits)
        self._times(e)
    @staticmethod
    def _set_all(gauge: Gauge, known: set[str], values: dict[str, float], keep_known: bool = False) -> set[str]:
        """Set a labelled gauge to ``values``: known edges drop to 0, vanished rings disappear."""
        for lab, v in values.items():
            gauge.labels(lab).set(v)
        for lab in known - values.keys():
            if keep_known:
                gauge.labels(lab).set(0)
            else:
                gauge.remove(lab)
        return (known | values.keys()) if keep_known else set(values)

    def _placement(self, splits: dict[str, tuple[int, ...]]) -> None:
        counts: dict[str, int] = {}
        for s in splits.values():
            lab = split_label(s)
            counts[lab] = counts.get(lab, 0) + 1
        if len(counts) > MAX_SPLIT_SERIES:
            ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
            kept = dict(ranked[: MAX_SPLIT_SERIES - 1])
            kept[OTHER_SPLIT] = sum(n for _, n in ranked[MAX_SPLIT_SERIES - 1:])
            counts = kept
        self._split_labels = self._set_all(self.placement_devices, self._split_labels, counts)
        if splits:
            for i, tier in enumerate(TIERS):
                self.placement_nodes.labels(tier=tier).set(sum(s[i] for s in splits.values()) / len(splits))
        if self.per_device_labels:
            for device, s in splits.items():
                for i, tier in enumerate(TIERS):
                    self.device_nodes.labels(device=device, tier=tier).set(s[i])
            for device in self._device_labels - splits.keys():
                for tier in TIERS:
                    self.device_nodes.remove(device, tier)
            self._device_labels = set(splits)

    def _handover(self, e: ev.Handover) -> None:
        self.handovers.inc()
        if self.per_device_labels:
            self.device_handovers.labels(device=e.device).inc()
        self._times(e)

    def _migration(self, e: ev.Migration) -> None:
        ok = "true" if e.ok else "false"
        self.migrations.labels(policy=e.policy, ok=ok).inc()
        self.migration_bytes.labels(policy=e.policy).inc(e.bytes)
        self.migration_duration.labels(policy=e.policy).observe(e.wall_duration_s)
        self._times(e)

    def _ring_pass(self, e: ev.RingPass) -> None:
        self.ring_passes.labels(ok="true" if e.ok else "false").inc()
        self.ring_pass_bytes.inc(e.bytes)
        self._times(e)

    def _failure(self, e: ev.Failure) -> None:
        self.failures.labels(kind=e.failure_kind).inc()
        self._times(e)

    def _replan(self, e: ev.Replan) -> None:
        self.replans.inc()
        self.replan_changes.inc(e.changed)
        self._times(e)

    def _refused(self, e: ev.Refused) -> None:
        counts = {(port, reason): n for port, by in e.counts.items() for reason, n in by.items()}
        unknown = [k for k, n in counts.items() if k[0] not in PORTS or k[1] not in REASONS or n < 0]
        if unknown:  # labels stay a fixed set
            raise ValueError(f"refused: unknown port/reason or negative count {unknown}")
        for (port, reason), n in counts.items():
            self.refused.labels(port=port, reason=reason).inc(n)
        self._times(e)

    def _run_end(self, e: ev.RunEnd) -> None:
        self.run_running.set(0)
        self.accuracy.set(e.final_accuracy)
        self._times(e)
