"""`irae export`: the folded restore direction of a weights file as an ONNX file, for ONNX Runtime and other tools."""

from __future__ import annotations

from pathlib import Path

import typer

from ._common import user_errors

EPILOG = """Examples:

  irae export irae-denoise-medium -o denoise.onnx

  irae export my-weights.safetensors -o my.onnx --overwrite

The graph takes 'image' and gives 'restored': float32 NCHW RGB in [0, 1], any batch, height and width
that are multiples of the file's size_multiple (pad first; crop after); see docs/onnx.md.
Exit codes: 0 written, 2 usage error (nothing written)."""


def register(app: typer.Typer) -> None:
    @app.command("export", epilog=EPILOG)
    def export_cli(
        weights: str = typer.Argument(..., help="Shipped weights name or a .safetensors path.", show_default=False),
        out: Path = typer.Option(..., "--out", "-o", help="The .onnx file to write.", show_default=False),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing file."),
    ) -> None:
        """Export weights to ONNX (opset 18, fp32, dynamic batch, height and width); needs irae\\[onnx]."""
        with user_errors():
            from ..onnx_export import export_weights

            meta = export_weights(weights, out, overwrite=overwrite)
        typer.echo(f"wrote {out}: task {meta['task']}, preset {meta['preset']}, {meta['channels']} channels, "
                   f"size multiple {meta['size_multiple']}")
