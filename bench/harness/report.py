"""Results: medians over rounds, ratios to the reference per round, markdown, JSON, chart."""

from __future__ import annotations

import json
import statistics
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .targets import REFERENCE, Target
from .workloads import METRICS, WORKLOADS, Options

if TYPE_CHECKING:
    from matplotlib.axes import Axes


COLOURS = {"aiotusd": "#1f4e9c", "aiotusd-nofsync": "#6fa8dc"}
"""Bar colours: aiotusd blue, its peers orange, the ceilings grey."""


@dataclass
class Record:
    """One run: one target, one workload, one round."""

    workload: str
    round: int
    target: str
    figures: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0


@dataclass(frozen=True)
class Summary:
    median: float
    low: float
    high: float
    ratio: float | None
    """Median over rounds of this target's figure divided by the reference's, same round."""


def _values(records: list[Record], target: str, key: str) -> dict[int, float]:
    return {r.round: r.figures[key] for r in records if r.target == target and key in r.figures}


def summarize(records: list[Record], target: str, key: str) -> Summary | None:
    values = _values(records, target, key)
    if not values:
        return None
    reference = _values(records, REFERENCE, key)
    ratios = [values[n] / reference[n] for n in values if reference.get(n)]
    return Summary(statistics.median(values.values()), min(values.values()),
                   max(values.values()), statistics.median(ratios) if ratios else None)


def _cell(summary: Summary | None, digits: int, is_reference: bool) -> str:
    if summary is None:
        return "—"
    text = f"{summary.median:,.{digits}f}"
    if summary.ratio is not None and not is_reference:
        text += f" ({summary.ratio:.2f}×)"
    return text


def _notes(records: list[Record], workload: str, labels: dict[str, str]) -> list[str]:
    lines: list[str] = []
    for record in records:
        if record.workload != workload:
            continue
        said = [f"round {record.round + 1}: {record.error}"] if record.error else record.notes
        for note in said:
            line = f"- {labels[record.target]}: {note}"
            if line not in lines:
                lines.append(line)
    return lines


def table(workload: str, options: Options, records: list[Record], targets: list[Target]) -> str:
    spec = WORKLOADS[workload]
    rows = [t for t in targets if workload in t.workloads]
    heads = [f"{m.label}, {m.unit} {'↑' if m.higher_is_better else '↓'}"
             for m in (METRICS[key] for key in spec.table)]
    lines = [f"### {workload}: {spec.title(options)}", "",
             "| | " + " | ".join(heads) + " |", "|---|" + "---:|" * len(heads)]
    for target in rows:
        cells = [_cell(summarize(records, target.name, key), METRICS[key].digits,
                       target.name == REFERENCE) for key in spec.table]
        lines.append(f"| {target.label} | " + " | ".join(cells) + " |")
    notes = _notes(records, workload, {t.name: t.label for t in targets})
    parts = ["\n".join(lines), "\n".join(notes), _load_note(records, workload)]
    return "\n\n".join(part for part in parts if part)


def _load_note(records: list[Record], workload: str) -> str:
    """How busy the load generator was: near 1 core, it may have been the limit."""
    cores = [value for r in records if r.workload == workload
             for key, value in r.figures.items() if key.endswith("_client_cores")]
    if not cores:
        return ""
    return (f"Load generator CPU: at most {max(cores):.2f} cores in any run of {workload} "
            "(results.json has each run's client and server CPU use).")


def markdown(
    tables: list[str], options: Options, rounds: int, facts: dict[str, str],
    targets: list[Target], skipped: dict[str, str],
) -> str:
    """The whole report: machine facts, how to read it, one table per workload, what is missing."""
    reference = next((t.label for t in targets if t.name == REFERENCE), None)
    how = (f"Medians of {rounds} round(s); targets run in A-B-B-A order (reversed every other "
           "round), each started fresh with an empty data directory. ↑ higher is better, "
           "↓ lower is better.")
    if reference is not None:
        how += (f" In brackets: the median over rounds of the ratio to {reference} "
                "in the same round.")
    lines = ["## Benchmark results", "", how, "", "| machine | |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in facts.items()]
    lines += ["", "\n\n".join(tables)]
    if skipped:
        lines += ["", "Not measured:"] + [f"- {name}: {why}" for name, why in skipped.items()]
    return "\n".join(lines) + "\n"


def write_json(path: Path, records: list[Record], options: Options, facts: dict[str, str],
               skipped: dict[str, str]) -> None:
    path.write_text(json.dumps({
        "machine": facts, "options": asdict(options), "not_measured": skipped,
        "runs": [asdict(record) for record in records],
    }, indent=1) + "\n")


def write_chart(path: Path, workloads: list[str], records: list[Record],
                targets: list[Target]) -> bool:
    """One panel per figure: medians as bars, the spread over rounds as error bars.

    False when matplotlib is not installed (the smoke test's environment) or no run succeeded.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no chart", file=sys.stderr)
        return False
    panels = [(w, k) for w in workloads for k in WORKLOADS[w].table
              if any(summarize(records, t.name, k) for t in targets)]
    if not panels:
        return False
    columns = 3
    figure, axes = plt.subplots((len(panels) + columns - 1) // columns, columns, squeeze=False,
                                figsize=(5.5 * columns, 2.6 * ((len(panels) + 2) // columns)))
    for axis, (workload, key) in zip(axes.flat, panels, strict=False):
        _panel(axis, workload, key, records, targets)
    for axis in list(axes.flat)[len(panels):]:
        axis.set_visible(False)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return True


def _panel(axis: Axes, workload: str, key: str, records: list[Record],
           targets: list[Target]) -> None:
    shown = [(t, s) for t in targets if (s := summarize(records, t.name, key)) is not None]
    metric = METRICS[key]
    medians = [s.median for _, s in shown]
    spread = [[s.median - s.low for _, s in shown], [s.high - s.median for _, s in shown]]
    axis.barh([t.label for t, _ in shown], medians, xerr=spread,
              color=[COLOURS.get(t.name, "#bbbbbb" if t.ceiling else "#ff7f0e") for t, _ in shown])
    axis.invert_yaxis()
    arrow = "higher is better" if metric.higher_is_better else "lower is better"
    axis.set_title(f"{workload} {metric.label} ({metric.unit}, {arrow})", fontsize=9)
    axis.tick_params(labelsize=8)
