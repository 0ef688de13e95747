"""A live progress bar (round, loss, stragglers seen, rounds/s) and the end-of-run summary table."""

from __future__ import annotations

import math

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table


class RoundProgress:
    def __init__(self, coord, enabled: bool = True, console: Console | None = None) -> None:
        self.coord = coord
        self.enabled = enabled
        self.console = console or Console(stderr=True)
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"), TextColumn("stragglers {task.fields[stragglers]}"),
            TextColumn("{task.fields[rate]} rounds/s"), TimeElapsedColumn(),
            console=self.console, disable=not enabled, transient=False,
        )
        self.task = None

    def __enter__(self):
        self.progress.__enter__()
        self.task = self.progress.add_task(f"{self.coord.cfg.name} [{self.coord.scheme.name}]",
                                           total=self.coord.total_rounds, loss="-", stragglers=0, rate="-")
        return self

    def __exit__(self, *exc):
        self.progress.__exit__(*exc)

    def update(self, record: dict, coord) -> None:
        loss = coord.last_loss
        rate = (record["round"] + 1) / record["elapsed_s"] if record["elapsed_s"] > 0 else 0.0
        shown = "-" if math.isnan(loss) else f"{loss:.4f}"
        if "epsilon" in record:  # private runs: workers send no losses; show the budget spent instead
            shown = f"- eps {record['epsilon']:.3g}"
        self.progress.update(self.task, advance=1, loss=shown,
                             stragglers=coord.stragglers_seen, rate=f"{rate:.1f}")


def summary_table(summary: dict) -> Table:
    t = Table(title=f"dcoord run: {summary.get('name', '')}", show_header=True)
    t.add_column("metric")
    t.add_column("value", justify="right")
    acc = summary.get("test_accuracy")
    rows = [
        ("scheme", summary["scheme"]), ("workers", summary["workers"]),
        ("rounds completed", summary["rounds_completed"]), ("wall time (s)", f"{summary['wall_s']:.2f}"),
        ("rounds/s", f"{summary['rounds_per_s']:.1f}" if summary.get("rounds_per_s") else "-"),
        ("final loss", f"{summary['final_loss']:.5f}"),
        ("test accuracy", f"{acc[0]:.3f}" if acc else "-"),
        ("stragglers seen", summary["stragglers_seen"]),
        ("late results dropped", summary["dropped_late_results"]),
        ("rejected results", sum(summary["rejected_results"].values())),
        ("max decode residual", f"{summary['max_decode_residual']:.2e}"),
    ]
    if "epsilon" in summary:
        rows.append(("privacy (epsilon, delta)", f"({summary['epsilon']:.3g}, {summary['delta']:g})"))
    for k, v in rows:
        t.add_row(k, str(v))
    return t
