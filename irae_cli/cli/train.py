"""`irae train` (arrives with issue #5)."""

from __future__ import annotations

import typer

from ._common import fail


def register(app: typer.Typer) -> None:
    @app.command("train", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
    def train() -> None:
        """Not built yet (issue #5)."""
        fail("'irae train' is not built yet (issue #5)")
