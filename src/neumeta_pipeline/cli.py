"""Project commands beside Kedro's own (``kedro prune``)."""

from __future__ import annotations

import click

from .versions import prune as prune_versions
from .versions import tasks_on_disk


@click.group(name="neumeta-pipeline")
def cli() -> None:
    """Commands of the neumeta-pipeline project."""


@cli.command()
@click.option("--keep", type=click.IntRange(min=1), required=True, help="versions to keep of each dataset (newest first)")
@click.option("--task", "tasks", multiple=True, help="task to prune (repeatable); default: every task with data")
@click.option("--apply", is_flag=True, help="remove the old versions; without it the command only lists them")
@click.pass_obj
def prune(metadata, keep: int, tasks: tuple[str, ...], apply: bool) -> None:
    """Keep the newest KEEP versions of every dataset of a task and remove the older ones.

    A dry run unless --apply is given. Resume files of interrupted runs are listed, never removed.
    """
    data = metadata.project_path / "data"
    total = 0
    for task in tasks or tasks_on_disk(data):
        report = prune_versions(data, task, keep, apply)
        for dataset, old in report.removed.items():
            verb = "removed" if apply else "would remove"
            click.echo(f"{dataset.relative_to(metadata.project_path)}: {verb} {len(old)} of {len(old) + len(report.kept[dataset])} versions")
        for path in report.interrupted:
            click.echo(f"interrupted run kept: {path.relative_to(metadata.project_path)} (rm it to give up that run)")
        total += report.freed_bytes
    action = "freed" if apply else "would free (run again with --apply to remove)"
    click.echo(f"{action}: {total / 2**20:.1f} MiB")
