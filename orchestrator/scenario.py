"""Scenario files: YAML in, a validated, frozen :class:`Scenario` out, before anything starts.

A device entry may carry ``count: N`` to stand for N devices, and any of its speeds may be a range
``[low, high]`` drawn log-uniformly per device from the scenario's seed, so a city of devices
fits in a few lines.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from tierflow.migration.errors import MobilityInputError
from tierflow.migration.mobility import TraceSample, parse_trace
from tierflow.orchestrator import augment, limits
from tierflow.orchestrator.augment import AugmentSpec
from tierflow.orchestrator.errors import TierflowError
from tierflow.orchestrator.files import read_text
from tierflow.orchestrator.resources import (
    AvailabilitySpec,
    AvailabilityState,
    BandwidthWalkSpec,
    ResourcesSpec,
    read_trace,
)
from tierflow.orchestrator.validate import Fields, finite
from tierflow.tiers.optim import OPTIMIZERS, OptimizerSpec

CLOUD_EDGE = "@cloud"  # not a valid edge name in a scenario file (see _edge_name)
MAX_DEVICES = 100_000  # in all, after ``count:``; a typo of a few zeros should fail, not exhaust memory
MAX_MBPS = 1e300  # Mb/s: a finite bound whose bits per second (x 1e6) are still finite


@dataclass(frozen=True)
class CloudSpec:
    flops_per_s: float


@dataclass(frozen=True)
class EdgeSpec:
    name: str
    position: tuple[float, float]
    radius_m: float
    flops_per_s: float
    cloud_bandwidth_mbps: float


@dataclass(frozen=True)
class DeviceSpec:
    name: str
    flops_per_s: float
    memory_mb: float
    bandwidth_mbps: float
    data_share: float
    position: tuple[float, float]
    edge: str
    split: tuple[str | int, ...] | None  # None: the scenario's default split


@dataclass(frozen=True)
class ModelSpec:
    name: str


@dataclass(frozen=True)
class DatasetSpec:
    name: str = "digits"
    path: str | None = None
    partition: str = "iid"
    alpha: float = 0.5
    test_fraction: float = 0.2
    augment: AugmentSpec | None = None  # transformed copies of the training set (orchestrator/augment.py)


@dataclass(frozen=True)
class TrainingSpec:
    rounds: int
    local_steps: int  # k1: local steps between edge aggregations
    batch_size: int
    optimizer: OptimizerSpec
    seed: int = 0
    target_accuracy: float = 0.9
    devices_per_round: int | float | None = None  # a count, or a share of the available devices; None: all


@dataclass(frozen=True)
class AggregationSpec:
    schedule: str = "hierfavg"  # or "flat": the cloud averages all devices directly
    cloud_every: int = 1  # k2: edge aggregations per cloud aggregation (one round)


@dataclass(frozen=True)
class MobilitySpec:
    model: str = "static"  # static | random_waypoint | trace
    speed_mps: tuple[float, float] = (1.0, 10.0)
    pause_s: float = 0.0
    area_m: tuple[float, float] | None = None
    trace: str | None = None
    trace_samples: tuple[TraceSample, ...] = ()  # the trace, read and checked with the scenario
    hysteresis_m: float = 10.0
    round_duration_s: float | None = None  # mobility seconds per round; None: follow the run's clock
    check_every_steps: int | None = None  # handover checks within a period; None: at period ends


@dataclass(frozen=True)
class PolicySpec:
    placement: str = "fixed"  # fixed | adaptive
    rings: int | str = "off"  # off | auto | K
    handover: str = "migrate"  # migrate | restart
    disconnected: str = "wait"  # wait | drop
    migration_timeout_s: float = 10.0
    step_timeout_s: float = 30.0  # a data-plane step unanswered this long fails that device's segment
    round_deadline_s: float | None = None  # wall seconds a device host may take per segment; None: no deadline
    migration_pause_s: float = 0.05  # virtual seconds a moved session stands still (batch boundary, ACK)
    replan: bool = True  # adaptive placement plans again every round (False: the first plan throughout)


@dataclass(frozen=True)
class ExecutionSpec:
    device_hosts: int = 2
    edge_hosts: int = 1  # actors holding the logical edge servers (capped at the number of edges)
    time: str = "emulated"  # emulated | real
    compute: str = "profile"  # how emulated time prices compute: profile | flops | measured
    engine: str = "auto"  # how a device host trains its devices: auto | vectorized | looped (tiers/engine.py)


@dataclass(frozen=True)
class CheckpointSpec:
    every_rounds: int = 1  # a checkpoint after every N-th round (and the last); a resume redoes at most N - 1


@dataclass(frozen=True)
class Scenario:
    name: str
    source: str
    cloud: CloudSpec
    edges: tuple[EdgeSpec, ...]
    devices: tuple[DeviceSpec, ...]
    model: ModelSpec
    dataset: DatasetSpec
    training: TrainingSpec
    aggregation: AggregationSpec
    split: tuple[str | int, ...]
    mobility: MobilitySpec = field(default_factory=MobilitySpec)
    policy: PolicySpec = field(default_factory=PolicySpec)
    execution: ExecutionSpec = field(default_factory=ExecutionSpec)
    resources: ResourcesSpec = field(default_factory=ResourcesSpec)
    checkpoints: CheckpointSpec = field(default_factory=CheckpointSpec)

    def edge(self, name: str) -> EdgeSpec:
        if name == CLOUD_EDGE:
            return self.cloud_as_edge()
        return next(e for e in self.edges if e.name == name)

    def cloud_as_edge(self) -> EdgeSpec:
        """The cloud serving a device directly (its edge died and no other covers it): it runs the
        edge's layers at the cloud's speed; the device reaches it over its own link, and its
        "uplink" to the cloud is internal (taken as the fastest edge uplink, so it never bounds)."""
        uplink = max(e.cloud_bandwidth_mbps for e in self.edges)
        return EdgeSpec(CLOUD_EDGE, (math.nan, math.nan), 0.0, self.cloud.flops_per_s, uplink)

    def device_split(self, device: DeviceSpec) -> tuple[str | int, ...]:
        return self.split if device.split is None else device.split


def load_scenario(path: str | Path, seed: int | None = None) -> Scenario:
    """Read and validate a scenario file; raise TierflowError naming the field on any mistake.

    ``seed`` replaces ``training.seed`` before anything is drawn from it (shards, speeds drawn
    from ranges, positions, resource paths): the same scenario on another seed."""
    path = Path(path)
    source = str(path)
    text = read_text(path, "scenario file")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise TierflowError(f"{source}: not valid YAML{where}: {getattr(exc, 'problem', exc)}") from exc
    except (ValueError, TypeError, AttributeError, OverflowError, RecursionError) as exc:
        # PyYAML's constructors raise these for well-formed YAML with impossible values
        # (``2001-13-45``, ``!!int x``, ``!!timestamp x``) or nesting deeper than the stack.
        raise TierflowError(f"{source}: not valid YAML: {type(exc).__name__}: {str(exc)[:200]}") from None
    if data is None:
        raise TierflowError(f"{source}: the scenario file is empty (expected a mapping with cloud, edges, devices...)")
    scenario = parse_scenario(data, source, base_dir=path.parent, seed=seed)
    from tierflow.orchestrator.checks import check_model_and_splits  # traces the model: no Ray needed

    check_model_and_splits(scenario)
    return scenario


def parse_scenario(data: Any, source: str, base_dir: Path = Path("."), seed: int | None = None) -> Scenario:
    top = Fields(source, "", data)
    name = top.string("name", Path(source).stem)
    seed_fields = top.sub("training")
    in_file = seed_fields.integer("seed", 0, **limits.SEED)  # checked (and marked as known) even when replaced
    seed = in_file if seed is None else seed

    cloud_f = top.sub("cloud")
    cloud = CloudSpec(cloud_f.number("flops_per_s", positive=True))
    cloud_f.reject_unknown()

    edges: list[EdgeSpec] = []
    for ef in top.items("edges"):
        edges.append(EdgeSpec(
            name=_edge_name(ef),
            position=ef.point("position", (0.0, 0.0), maximum_abs=limits.MAX_METRES, why=limits.METRES["why"]),
            radius_m=ef.number("radius_m", 1000.0, positive=True, **limits.METRES),
            flops_per_s=ef.number("flops_per_s", positive=True),
            cloud_bandwidth_mbps=ef.number("cloud_bandwidth_mbps", 1000.0, positive=True, maximum=MAX_MBPS),
        ))
        ef.reject_unknown()
    if not edges:
        top.fail("edges", "at least one edge server", [])
    _unique([e.name for e in edges], source, "edges")

    split = _split(top, "split", None)
    rng = np.random.default_rng(seed + 7919)
    devices: list[DeviceSpec] = []
    for df in top.items("devices"):
        count = df.integer("count", 1, minimum=1)
        if len(devices) + count > MAX_DEVICES:
            df.fail("count", f"at most {MAX_DEVICES:,} devices in the scenario in all", count)
        base = df.string("name")
        for i in range(count):
            devices.append(_device(df, base if count == 1 else f"{base}{i}", edges, rng))
        df.reject_unknown()
    if not devices:
        top.fail("devices", "at least one device", [])
    _unique([d.name for d in devices], source, "devices")

    model_f = top.sub("model")
    model = ModelSpec(model_f.string("name"))
    model_f.reject_unknown()

    ds_f = top.sub("dataset", {})
    dataset = DatasetSpec(
        name=ds_f.string("name", "digits"),
        path=ds_f.string("path", None) if ds_f.get("path", None) is not None else None,
        partition=ds_f.string("partition", "iid", choices=("iid", "dirichlet")),
        alpha=ds_f.number("alpha", 0.5, positive=True),
        test_fraction=ds_f.number("test_fraction", 0.2, positive=True, maximum=0.9),
        augment=_augment(ds_f),
    )
    if dataset.name == "cifar10" and dataset.path is None:
        ds_f.fail("path", "the local directory holding CIFAR-10's python batches", None)
    if dataset.path is not None and not Path(dataset.path).is_absolute():
        dataset = DatasetSpec(**{**dataset.__dict__, "path": str(base_dir / dataset.path)})
    ds_f.reject_unknown()

    tr = seed_fields
    opt_f = tr.sub("optimizer", {})
    optimizer = OptimizerSpec(
        name=opt_f.string("name", "sgd", choices=OPTIMIZERS),
        lr=opt_f.number("lr", 0.05, positive=True),
        momentum=opt_f.number("momentum", 0.0, minimum=0.0, maximum=0.999),
        weight_decay=opt_f.number("weight_decay", 0.0, minimum=0.0),
    )
    opt_f.reject_unknown()
    training = TrainingSpec(
        rounds=tr.integer("rounds", minimum=1, **limits.ROUNDS),
        local_steps=tr.integer("local_steps", minimum=1, **limits.LOCAL_STEPS),
        batch_size=tr.integer("batch_size", 32, minimum=1, **limits.BATCH_SIZE),
        optimizer=optimizer,
        seed=seed,
        target_accuracy=tr.number("target_accuracy", 0.9, minimum=0.0, maximum=1.0),
        devices_per_round=_devices_per_round(tr, len(devices)),
    )
    tr.reject_unknown()

    ag_f = top.sub("aggregation", {})
    aggregation = AggregationSpec(
        schedule=ag_f.string("schedule", "hierfavg", choices=("hierfavg", "flat")),
        cloud_every=ag_f.integer("cloud_every", 1, minimum=1, **limits.CLOUD_EVERY),
    )
    steps = training.rounds * aggregation.cloud_every * training.local_steps
    if steps > limits.MAX_STEPS_PER_DEVICE:
        tr.fail("local_steps", f"rounds x aggregation.cloud_every x local_steps <= {limits.MAX_STEPS_PER_DEVICE:,} "
                f"batches per device ({limits.STEPS_WHY})", steps)
    ag_f.reject_unknown()

    mobility = _mobility(top.sub("mobility", {}), base_dir, [d.name for d in devices])
    pol_f = top.sub("policy", {})
    rings = pol_f.get("rings", "off")
    if rings is False:  # YAML 1.1 reads a bare `off` as false
        rings = "off"
    if not (rings in ("off", "auto") or (isinstance(rings, int) and not isinstance(rings, bool) and rings >= 1)):
        pol_f.fail("rings", "'off', 'auto' or a positive integer", rings)
    if isinstance(rings, int):
        pol_f.integer("rings", minimum=1, **limits.RINGS)
    policy = PolicySpec(
        placement=pol_f.string("placement", "fixed", choices=("fixed", "adaptive")),
        rings=rings,
        handover=pol_f.string("handover", "migrate", choices=("migrate", "restart")),
        disconnected=pol_f.string("disconnected", "wait", choices=("wait", "drop")),
        migration_timeout_s=pol_f.number("migration_timeout_s", 10.0, positive=True, **limits.TIMEOUT_S),
        step_timeout_s=pol_f.number("step_timeout_s", 30.0, positive=True, **limits.TIMEOUT_S),
        round_deadline_s=pol_f.number("round_deadline_s", None, positive=True, **limits.TIMEOUT_S)
        if pol_f.get("round_deadline_s", None) is not None else None,
        migration_pause_s=pol_f.number("migration_pause_s", 0.05, minimum=0.0),
        replan=pol_f.boolean("replan", True),
    )
    if pol_f.get("plan_costs", None) is not None:
        pol_f.fail("plan_costs", "nothing: it is replaced by execution.compute (profile, flops or measured), "
                   "which prices the plan and the clock alike", pol_f.get("plan_costs"))
    pol_f.reject_unknown()
    ex_f = top.sub("execution", {})
    execution = ExecutionSpec(
        device_hosts=ex_f.integer("device_hosts", 2, minimum=1, **limits.DEVICE_HOSTS),
        edge_hosts=ex_f.integer("edge_hosts", 1, minimum=1, **limits.EDGE_HOSTS),
        time=ex_f.string("time", "emulated", choices=("emulated", "real")),
        compute=ex_f.string("compute", "profile", choices=("profile", "flops", "measured")),
        engine=ex_f.string("engine", "auto", choices=("auto", "vectorized", "looped")),
    )
    ex_f.reject_unknown()
    resources = _resources(top.sub("resources", {}), base_dir, [d.name for d in devices], [e.name for e in edges])
    _check_walk_rates(top.sub("resources", {}), resources, devices)
    if split is None:
        if policy.placement == "fixed" and any(d.split is None for d in devices):
            top.fail("split", "a default split (a list of cut layers) when placement is fixed", None)
        split = ()
    ck_f = top.sub("checkpoints", {})
    checkpoints = CheckpointSpec(every_rounds=ck_f.integer("every_rounds", 1, minimum=1))
    ck_f.reject_unknown()
    top.reject_unknown()
    return Scenario(name, source, cloud, tuple(edges), tuple(devices), model, dataset, training,
                    aggregation, split, mobility, policy, execution, resources, checkpoints)


def _edge_name(f: Fields) -> str:
    name = f.string("name")
    if name.startswith("@"):
        f.fail("name", "a name not starting with '@' (reserved for tierflow's own tiers)", name)
    return name


def _unique(names: list[str], source: str, where: str) -> None:
    seen: set[str] = set()
    for i, n in enumerate(names):
        if n in seen:
            raise TierflowError(f"{source}: {where}[{i}].name: expected a unique name, got duplicate {n!r}")
        seen.add(n)


def _split(f: Fields, key: str, default: Any) -> tuple[str | int, ...] | None:
    value = f.get(key, default)
    if value is None:
        return None
    if not isinstance(value, list) or len(value) > 2:
        f.fail(key, "a list of at most two cut layers (names or layer counts)", value)
    for i, cut in enumerate(value):
        if isinstance(cut, bool) or not isinstance(cut, (str, int)):
            raise TierflowError(f"{f.source}: {f.field(key)}[{i}]: expected a layer name or count, got {cut!r}")
    return tuple(value)


def _ranged(f: Fields, key: str, default: Any, rng: np.random.Generator, maximum: float | None = None) -> float:
    """A positive number, or [low, high] drawn log-uniformly (speeds span orders of magnitude)."""
    value = f.get(key, default)
    if isinstance(value, list):
        low, high = (finite(v) for v in value) if len(value) == 2 else (None, None)
        if low is None or high is None or not 0 < low <= high or (maximum is not None and high > maximum):
            f.fail(key, "a positive number or a range [low, high] of positive numbers"
                   + (f" <= {maximum:g}" if maximum is not None else ""), value)
        return float(math.exp(rng.uniform(math.log(low), math.log(high))))
    return f.number(key, default, positive=True, maximum=maximum)


def _device(f: Fields, name: str, edges: list[EdgeSpec], rng: np.random.Generator) -> DeviceSpec:
    edge_name = f.get("edge", None)
    if edge_name is not None and (not isinstance(edge_name, str) or edge_name not in {e.name for e in edges}):
        f.fail("edge", "the name of an edge server (" + ", ".join(e.name for e in edges) + ")", edge_name)
    position = f.point("position", None, maximum_abs=limits.MAX_METRES, why=limits.METRES["why"]) \
        if f.get("position", None) is not None else None
    if position is None and edge_name is None:
        f.fail("position", "a position [x, y] or an edge name", None)
    if position is None:
        position = next(e for e in edges if e.name == edge_name).position
    spread = f.number("spread_m", 0.0, minimum=0.0, **limits.METRES)
    if spread:  # before choosing the edge: a device starts attached to the edge its own position picks
        angle, radius = rng.uniform(0, 2 * math.pi), spread * math.sqrt(rng.uniform())
        position = (position[0] + radius * math.cos(angle), position[1] + radius * math.sin(angle))
    if edge_name is None:
        covering = [e for e in edges if math.dist(e.position, position) <= e.radius_m]
        if not covering:
            f.fail("position", "a position inside some edge server's coverage (or an explicit edge)", position)
        edge_name = min(covering, key=lambda e: math.dist(e.position, position)).name
    return DeviceSpec(
        name=name,
        flops_per_s=_ranged(f, "flops_per_s", None, rng),
        memory_mb=_ranged(f, "memory_mb", 1024.0, rng),
        bandwidth_mbps=_ranged(f, "bandwidth_mbps", None, rng, maximum=MAX_MBPS),
        data_share=f.number("data_share", 1.0, positive=True),
        position=position,
        edge=edge_name,
        split=_split(f, "split", None),
    )


def _mobility(f: Fields, base_dir: Path, devices: list[str]) -> MobilitySpec:
    model = f.string("model", "static", choices=("static", "random_waypoint", "trace"))
    speed = f.get("speed_mps", [1.0, 10.0])
    low, high = (finite(v) for v in speed) if isinstance(speed, list) and len(speed) == 2 else (None, None)
    if low is None or high is None or not 0 < low <= high:
        f.fail("speed_mps", "a range [low, high] of positive speeds", speed)
    if high > limits.SPEED_MPS["maximum"]:
        f.fail("speed_mps", f"speeds <= {limits.SPEED_MPS['maximum']:g} ({limits.SPEED_MPS['why']})", speed)
    area = f.point("area_m", None, maximum_abs=limits.MAX_METRES, why=limits.METRES["why"]) \
        if f.get("area_m", None) is not None else None
    if area is not None and min(area) < limits.MIN_AREA_M:
        f.fail("area_m", f"two sizes >= {limits.MIN_AREA_M:g} m (the walk's legs need room)", list(area))
    trace = f.get("trace", None)
    samples: tuple[TraceSample, ...] = ()
    if model == "trace":
        trace = f.string("trace")
        trace = str(base_dir / trace) if not Path(trace).is_absolute() else trace
        try:
            samples = parse_trace(read_text(trace, "mobility trace"), trace, devices)
        except (TierflowError, MobilityInputError) as exc:
            raise TierflowError(f"{f.source}: {f.field('trace')}: {exc}") from None
    spec = MobilitySpec(
        model=model,
        speed_mps=(low, high),
        pause_s=f.number("pause_s", 0.0, minimum=0.0),
        area_m=area,
        trace=trace,
        trace_samples=samples,
        hysteresis_m=f.number("hysteresis_m", 10.0, minimum=0.0, **limits.METRES),
        round_duration_s=f.number("round_duration_s", None, positive=True, **limits.ROUND_DURATION_S)
        if f.get("round_duration_s", None) is not None else None,
        check_every_steps=f.integer("check_every_steps", minimum=1, **limits.CHECK_EVERY_STEPS)
        if f.get("check_every_steps", None) is not None else None,
    )
    f.reject_unknown()
    return spec


def _device_list(f: Fields, key: str, devices: list[str]) -> tuple[str, ...] | None:
    value = f.get(key, None)
    if value is None:
        return None
    known = set(devices)
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v in known for v in value):
        f.fail(key, "a list of device names of this scenario", value)
    return tuple(value)


MIN_DT_S = 0.001  # a finer grid costs memory and time per virtual second, and models nothing real


def _resources(f: Fields, base_dir: Path, devices: list[str], edges: list[str]) -> ResourcesSpec:
    """The ``resources:`` section: a trace file and/or random processes (see orchestrator/resources.py).

    The trace is read and checked here, so its mistakes surface before anything starts.
    """
    trace_path = f.get("trace", None)
    rows: tuple = ()
    if trace_path is not None:
        trace_path = f.string("trace")
        trace_path = str(base_dir / trace_path) if not Path(trace_path).is_absolute() else trace_path
        try:
            rows = read_trace(trace_path, devices + edges, ambiguous=set(devices) & set(edges))
        except TierflowError as exc:
            raise TierflowError(f"{f.source}: {f.field('trace')}: {exc}") from exc
    availability = None
    if f.get("availability", None) is not None:
        af = f.sub("availability")
        dt_s = af.number("dt_s", 10.0, minimum=MIN_DT_S)
        sf = af.sub("states")
        states = []
        for state_name in list(sf.data):
            if not isinstance(state_name, str) or not state_name:
                sf.fail("", "state names that are non-empty strings", state_name)
            st = sf.sub(state_name)
            states.append(AvailabilityState(state_name, st.number("multiplier", positive=True),
                                            st.number("mean_s", minimum=dt_s)))
            st.reject_unknown()
        if len(states) < 2:
            af.fail("states", "at least two states, each {multiplier, mean_s}", sf.data)
        availability = AvailabilitySpec(tuple(states), dt_s, _device_list(af, "devices", devices))
        af.reject_unknown()
    walk = None
    if f.get("bandwidth_walk", None) is not None:
        wf = f.sub("bandwidth_walk")
        lo = wf.number("min", 0.1, positive=True)
        hi = wf.number("max", 2.0, positive=True)
        if lo > hi:
            wf.fail("max", f"a number >= min ({lo:g})", hi)
        walk = BandwidthWalkSpec(wf.number("sigma", positive=True), wf.number("dt_s", 10.0, minimum=MIN_DT_S),
                                 lo, hi, _device_list(wf, "devices", devices))
        wf.reject_unknown()
    f.reject_unknown()
    return ResourcesSpec(rows, trace_path, availability, walk)


MIN_WALK_STEP_BITS = 8 * 1024  # the least a device's link may carry in one step of the bandwidth walk


def _check_walk_rates(f: Fields, resources: ResourcesSpec, devices) -> None:
    """A transfer under the bandwidth walk is integrated step by step of the walk: a link that carries
    almost nothing per step would take billions of steps for one session (a hang, not a simulation)."""
    walk = resources.bandwidth_walk
    if walk is None:
        return
    traced: dict[str, list[float]] = {}
    for row in resources.trace:
        if row.bandwidth_bps is not None:
            traced.setdefault(row.entity, []).append(row.bandwidth_bps)
    for d in devices:
        if walk.devices is not None and d.name not in walk.devices:
            continue
        slowest = min([d.bandwidth_mbps * 1e6, *traced.get(d.name, ())]) * walk.min_multiplier
        if slowest * walk.dt_s < MIN_WALK_STEP_BITS:
            f.sub("bandwidth_walk").fail(
                "min", f"a floor at which device {d.name} still sends 1 kB per {walk.dt_s:g} s step (its slowest "
                f"rate would be {slowest:.3g} bit/s: raise min, dt_s or its bandwidth)", walk.min_multiplier)


def _devices_per_round(tr, n_devices: int) -> int | float | None:
    """``training.devices_per_round``: a whole number of devices, or a fraction of those available."""
    value = tr.get("devices_per_round", None)
    expected = f"a whole number of devices from 1 to {n_devices}, or a fraction in (0, 1]"
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        tr.fail("devices_per_round", expected, value)
    if isinstance(value, int):
        if not 1 <= value <= n_devices:
            tr.fail("devices_per_round", expected, value)
        return value
    if not 0.0 < value <= 1.0:
        tr.fail("devices_per_round", expected, value)
    return float(value)


def _augment(ds_f: Fields) -> AugmentSpec | None:
    """``dataset.augment``: how many transformed copies of the training set, shifted and noised how."""
    if ds_f.get("augment", None) is None:
        return None
    f = ds_f.sub("augment")
    spec = AugmentSpec(
        copies=f.integer("copies", minimum=1, maximum=augment.MAX_COPIES, why="copies of the whole training set"),
        max_shift_px=f.integer("max_shift_px", 1, maximum=augment.MAX_SHIFT_PX),
        noise_std=f.number("noise_std", 0.0, minimum=0.0, maximum=augment.MAX_NOISE_STD),
        seed=f.integer("seed", None, **limits.SEED) if f.get("seed", None) is not None else None,
    )
    if spec.max_shift_px == 0 and spec.noise_std == 0:
        f.fail("max_shift_px", "a shift >= 1 or a noise_std > 0 (else every copy equals its original)", 0)
    f.reject_unknown()
    return spec
