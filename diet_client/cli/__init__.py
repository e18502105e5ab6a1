"""The `diet` commands that talk to a running service (streams, blocks, distill, jobs, datasets, audits, webhooks, status).

`service/cli.py` mounts them beside the local ones (`serve`, `tokens`, the engine's `bench`, `convert`).
"""

from __future__ import annotations

import typer

from diet_client.cli import audits, blocks, datasets, jobs, streams, webhooks
from diet_client.cli.common import EXIT_CODES_HELP


PANEL = "Talk to a running service (--url/DIET_URL, --token/DIET_TOKEN)"


def register(app: typer.Typer) -> None:
    """Add the service commands to the `diet` app, in the order a stream's life goes."""
    app.add_typer(streams.app, name="streams", rich_help_panel=PANEL)
    app.add_typer(blocks.app, name="blocks", rich_help_panel=PANEL)
    app.command("distill", rich_help_panel=PANEL)(jobs.distill)
    app.add_typer(jobs.app, name="jobs", rich_help_panel=PANEL)
    app.add_typer(datasets.app, name="datasets", rich_help_panel=PANEL)
    app.command("audit", rich_help_panel=PANEL)(audits.audit)
    app.add_typer(audits.app, name="audits", rich_help_panel=PANEL)
    app.add_typer(webhooks.app, name="webhooks", rich_help_panel=PANEL)
    app.command("status", rich_help_panel=PANEL)(streams.status)


__all__ = ["EXIT_CODES_HELP", "register"]
