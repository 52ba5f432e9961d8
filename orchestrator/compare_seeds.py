"""A comparison over several seeds: every figure and ratio as its mean and min-max, and a banded plot.

One seed answers one draw of the city (its shards, speeds, positions, resource paths); a policy
that wins on one draw may lose on the next. ``tierflow compare --seeds 1,2,3`` runs every variant
on each seed; this module folds the per-seed rows (orchestrator/compare.py) into one table.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from tierflow.orchestrator.compare import ALL_ROUNDS, Row, compare, start_comparison, summary_ratios
from tierflow.orchestrator.scenario import Scenario

BySeed = Mapping[int, Sequence[Row]]


@dataclass(frozen=True)
class Spread:
    """One figure over the seeds."""

    mean: float
    lo: float
    hi: float
    values: tuple[float, ...]

    def text(self, fmt: str = ".1f") -> str:
        if len(self.values) == 1:
            return format(self.mean, fmt)
        return f"{self.mean:{fmt}} ({self.lo:{fmt}}-{self.hi:{fmt}})"


def spread(values: Sequence[float | None]) -> Spread | None:
    """None when a seed has no value (a target not reached, a ratio not computable)."""
    if not values or any(v is None for v in values):
        return None
    vs = tuple(float(v) for v in values)
    return Spread(sum(vs) / len(vs), min(vs), max(vs), vs)


def _by_variant(by_seed: BySeed) -> dict[str, list[Row]]:
    out: dict[str, list[Row]] = {}
    for rows in by_seed.values():
        for r in rows:
            out.setdefault(r.variant, []).append(r)
    return out


def _missing(seeds: Sequence[int], values: Sequence[float | None]) -> str:
    return ", ".join(str(s) for s, v in zip(seeds, values, strict=True) if v is None)


def ratio_spreads(by_seed: BySeed, measure: str) -> dict[str, tuple[Spread | None, str]]:
    """Each ratio over the seeds; where a seed cannot give it, the text says which and why."""
    seeds = sorted(by_seed)
    per_seed = {s: summary_ratios({r.variant: r for r in by_seed[s]}, measure) for s in seeds}
    out = {}
    for label in per_seed[seeds[0]]:
        values = [per_seed[s][label][0] for s in seeds]
        sp = spread(values)
        if sp is not None:
            out[label] = (sp, f"{sp.text('.2f')} over seeds {', '.join(map(str, seeds))}")
        else:
            why = "; ".join(f"seed {s}: {per_seed[s][label][1]}" for s in seeds if per_seed[s][label][0] is None)
            out[label] = (None, f"n/a on seed {_missing(seeds, values)} ({why})")
    return out


def markdown_seeds(by_seed: BySeed, target: float) -> str:
    seeds = sorted(by_seed)
    lines = [f"Seeds {', '.join(map(str, seeds))}: each cell is the mean over the seeds and (min-max).", "",
             f"| variant | time to {target:.0%} (virtual s) | final accuracy | virtual s (all rounds) | "
             "handovers / migrations / restarts | switches | rounds charged = predicted | largest residual |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for variant, rows in _by_variant(by_seed).items():
        ttt = spread([r.time_to_target_s for r in rows])
        ttt_text = ttt.text() if ttt else f"not reached on seed {_missing(seeds, [r.time_to_target_s for r in rows])}"
        acc = spread([r.final_accuracy for r in rows])
        total = spread([r.virtual_time_s for r in rows])
        moves = " / ".join(spread([getattr(r, k) for r in rows]).text(".0f")
                           for k in ("handovers", "migrations", "restarts"))
        exact = sum(r.exact_rounds for r in rows)
        rounds = sum(len(r.curve) for r in rows)
        residual = max(r.residual_max for r in rows)
        lines.append(f"| {variant} | {ttt_text} | {acc.text('.3f')} | {total.text()} | {moves} | "
                     f"{spread([r.switches for r in rows]).text('.0f')} | {exact} of {rounds} | "
                     f"{100 * residual:.1f}% |")
    lines += ["", "Time-to-target ratios (above 1: the first is slower):", ""]
    lines += [f"- {label}: {text}" for label, (_, text) in ratio_spreads(by_seed, "time_to_target_s").items()]
    lines += ["", "The same over the virtual time of all rounds:", ""]
    lines += [f"- {label}: {text}" for label, (_, text) in ratio_spreads(by_seed, ALL_ROUNDS).items()]
    return "\n".join(lines) + "\n"


def to_json_seeds(by_seed: BySeed, scenario: str, target: float) -> dict:
    def ratios(measure: str) -> dict:
        out = {}
        for label, (sp, text) in ratio_spreads(by_seed, measure).items():
            figures = {} if sp is None else {"mean": sp.mean, "min": sp.lo, "max": sp.hi, "values": list(sp.values)}
            out[label] = {**figures, "text": text}
        return out

    return {"scenario": scenario, "target_accuracy": target, "seeds": sorted(by_seed),
            "rows": {str(s): [asdict(r) for r in rows] for s, rows in sorted(by_seed.items())},
            "ratios": ratios("time_to_target_s"), "ratios_all_rounds": ratios(ALL_ROUNDS)}


def plot_seeds(by_seed: BySeed, target: float, path: Path) -> Path:
    """Each variant's mean curve over the seeds (mean virtual time and accuracy after each round),
    with a band from the least to the most accurate seed at that round."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 5.5))
    for variant, rows in _by_variant(by_seed).items():
        if any(r.same_as for r in rows):
            continue
        n = min(len(r.curve) for r in rows)
        if n == 0:
            continue
        xs = [sum(r.curve[i][0] for r in rows) / len(rows) for i in range(n)]
        accs = [[r.curve[i][1] for r in rows] for i in range(n)]
        (line,) = ax.plot(xs, [sum(a) / len(a) for a in accs], marker="o", markersize=3, label=variant)
        ax.fill_between(xs, [min(a) for a in accs], [max(a) for a in accs], color=line.get_color(), alpha=0.15)
    ax.axhline(target, color="grey", linestyle="--", linewidth=1, label=f"target {target:.0%}")
    ax.set_xlabel("virtual time (s), mean over seeds")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1)
    ax.set_title(f"accuracy against virtual time: mean over seeds {', '.join(map(str, sorted(by_seed)))}, "
                 "band = min to max")
    ax.grid(alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def compare_over_seeds(reseed: Callable[[int], Scenario], seeds: Sequence[int], names: Sequence[str], out: Path,
                       address: str | None = None, rounds: int | None = None, progress: bool = True,
                       profile_path: str | None = None) -> dict[int, list[Row]]:
    """Every variant on each seed (``out/seed<s>/``, each with its own table), then one table and plot
    of means and min-max over the seeds in ``out``. One layer profile serves every run."""
    first = reseed(seeds[0])
    profile = start_comparison(first, out, address, profile_path)
    by_seed: dict[int, list[Row]] = {}
    for k, seed in enumerate(seeds, 1):
        print(f"== seed {seed} ({k}/{len(seeds)})", flush=True)
        by_seed[seed] = compare(first if k == 1 else reseed(seed), names, out / f"seed{seed}", address, rounds,
                                progress, profile=profile)
    target = first.training.target_accuracy
    (out / "compare.md").write_text(markdown_seeds(by_seed, target))
    (out / "compare.json").write_text(json.dumps(to_json_seeds(by_seed, first.name, target), indent=1) + "\n")
    plot_seeds(by_seed, target, out / "compare.png")
    return by_seed
