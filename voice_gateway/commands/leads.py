"""`voiceagent leads …`"""

from __future__ import annotations

import typer

app = typer.Typer(help="Leads: bulk import.", no_args_is_help=True)
