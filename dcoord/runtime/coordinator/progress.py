"""A live progress bar (round, loss, stragglers seen, rounds/s), one line per worker lost or back, and the
end-of-run summary table.

Reads the coordinator only through its public face: ``snapshot()``, ``add_worker_observer``."""

from __future__ import annotations

import math

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from dcoord.runtime.coordinator.membership import WorkerEvent, slack_words


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
        self._wait_s = coord.cfg.runtime.worker_wait_s
        coord.add_worker_observer(self.on_worker)

    def __enter__(self):
        self.progress.__enter__()
        v = self.coord.snapshot()
        self.task = self.progress.add_task(f"{v.name} [{v.scheme}]", total=v.total_rounds, loss="-",
                                           stragglers=0, rate="-")
        return self

    def __exit__(self, *exc):
        self.progress.__exit__(*exc)

    def update(self, record: dict, coord) -> None:
        v = coord.snapshot()
        rate = (record["round"] + 1) / record["elapsed_s"] if record["elapsed_s"] > 0 else 0.0
        shown = "-" if math.isnan(v.last_loss) else f"{v.last_loss:.4f}"
        if "epsilon" in record:  # private runs: workers send no losses; show the budget spent instead
            shown = f"- eps {record['epsilon']:.3g}"
        self.progress.update(self.task, advance=1, loss=shown, stragglers=v.stragglers_seen, rate=f"{rate:.1f}")
        for event in record.get("offences", ()):  # coding.byzantine: a liar caught, one line each
            from dcoord.runtime.coordinator.byzantine import describe

            self.console.print(f"dcoord: {describe(event)}", markup=False, highlight=False)

    def on_worker(self, event: WorkerEvent) -> None:
        """A worker lost or back: one line above the bar (shown with or without the bar: it explains why
        rounds slow down or speed up again)."""
        self.console.print(f"dcoord: {event.describe(self._wait_s)}", markup=False, highlight=False)


def _models_rows(summary: dict) -> list[tuple[str, str]]:
    """Every model's final loss (and test accuracy) when the job trains several (a sweep)."""
    per = summary.get("per_model") or []
    rows = []
    for m in per:
        acc = m.get("test_accuracy")
        lr = f" (lr {m['lr']:g})" if m.get("lr") is not None else ""
        rows.append((f"model {m['model']}{lr}: final loss / test accuracy",
                     f"{m['final_loss']:.5f} / " + (f"{acc:.3f}" if acc is not None else "-")))
    return rows


def _membership_rows(summary: dict) -> list[tuple[str, str]]:
    """Workers lost during the run (and back), and the straggler slack the code was left with."""
    ms = summary.get("membership") or {}
    events = ms.get("events") or []
    if not events:
        return []
    lost = [e for e in events if e["kind"] == "lost"]
    back = [e for e in events if e["kind"] == "rejoined"]
    say = ", ".join(f"worker {e['worker']} at round {e['round'] + 1} ({e['reason']})" for e in lost)
    rows = [("workers lost", f"{len(lost)}: {say}")]
    if back:
        rows.append(("workers back", ", ".join(f"worker {e['worker']} at round {e['round'] + 1}" for e in back)))
    words = slack_words(ms["stragglers_tolerated"], ms["slack_left"], slow=tuple(ms.get("slow", ())))
    rows.append(("straggler slack at the end", words))
    return rows


def summary_table(summary: dict) -> Table:
    t = Table(title=f"dcoord run: {summary.get('name', '')}", show_header=True)
    t.add_column("metric")
    t.add_column("value", justify="right")
    acc = summary.get("test_accuracy")
    several = len(summary.get("per_model") or []) > 1
    rows = [
        ("scheme", summary["scheme"]), ("workers", summary["workers"]),
        ("rounds completed", summary["rounds_completed"]), ("wall time (s)", f"{summary['wall_s']:.2f}"),
        ("rounds/s", f"{summary['rounds_per_s']:.1f}" if summary.get("rounds_per_s") else "-"),
    ]
    if several:
        rows += _models_rows(summary)
    else:
        rows += [("final loss", f"{summary['final_loss']:.5f}"), ("test accuracy", f"{acc[0]:.3f}" if acc else "-")]
    rows += [
        ("stragglers seen", summary["stragglers_seen"]),
        ("late results dropped", summary["dropped_late_results"]),
        ("rejected results", sum(summary["rejected_results"].values())),
        ("max decode residual", f"{summary['max_decode_residual']:.2e}"),
    ]
    rows += _membership_rows(summary)
    byz = summary.get("byzantine")
    if byz:
        rows.append(("liars: offences by worker / excluded", f"{byz['offences'] or '-'} / {byz['excluded'] or '-'}"))
    if "epsilon" in summary:
        rows.append(("privacy (epsilon, delta)", f"({summary['epsilon']:.3g}, {summary['delta']:g})"))
    for k, v in rows:
        t.add_row(k, str(v))
    return t
