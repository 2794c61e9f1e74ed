"""``dunning demo``: the whole pipeline against a simulated billing system."""

from __future__ import annotations

from pathlib import Path

import click

from worker.cli.common import BadInput, settings_or_exit


@click.command()
@click.option("--customers", default=100, show_default=True, type=int)
@click.option("--seed", default=7, show_default=True, type=int)
@click.option(
    "--out",
    default=None,
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the demo writes its database, outbox and report [default: DATA_DIR/demo].",
)
def demo(customers: int, seed: int, out: Path | None) -> None:
    """The whole pipeline against a simulated billing system, over a simulated month."""
    from worker.demo import run_demo

    if customers < 1:
        raise BadInput("--customers: must be at least 1")
    run_demo(customers=customers, seed=seed, out=out or settings_or_exit().data_dir / "demo")
