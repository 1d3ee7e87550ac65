"""Entry point of the ``cnn-explain`` console script."""

from __future__ import annotations

import warnings
from typing import Annotated

import typer

from cli import cam_command, guided_command, model_commands, predict_command
from cli import filters_command
from cli import ascent_command
from cli import gallery_command
from cli import detect_command
from cli import audit_command
from cli import report_command
from cli.common import HelpCommand, HelpGroup

# Library warnings that say nothing to a user of the command line (the CLI reports what matters in one line):
# matplotlib's missing-glyph notes for file names in scripts its font lacks, torch's deprecation notes.
warnings.filterwarnings("ignore", message=r"Glyph \d+ .* missing from font", category=UserWarning)
warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.")

app = typer.Typer(
    name="cnn-explain",
    help="See what convolutional networks see: predictions, class activation maps, guided backprop, "
         "feature visualisation and dataset audits. Works offline with the embedded EfficientNet-Lite0.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=HelpGroup,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        from explain import __version__

        typer.echo(f"cnn-explain {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """See what convolutional networks see."""


app.command("models", cls=HelpCommand)(model_commands.models)
app.command("layers", cls=HelpCommand)(model_commands.layers)
app.command("predict", cls=HelpCommand)(predict_command.predict)
app.command("cam", cls=HelpCommand)(cam_command.cam)
app.command("guided-backprop", cls=HelpCommand)(guided_command.guided_backprop)
app.command("saliency", cls=HelpCommand)(guided_command.saliency)
app.command("filters", cls=HelpCommand)(filters_command.filters)
app.command("activations", cls=HelpCommand)(filters_command.activations)
app.command("ascent", cls=HelpCommand)(ascent_command.ascent)
app.command("index", cls=HelpCommand)(gallery_command.index)
app.command("neighbours", cls=HelpCommand)(gallery_command.neighbours)
app.command("tsne", cls=HelpCommand)(gallery_command.tsne)
app.command("detect", cls=HelpCommand)(detect_command.detect)
app.command("segment", cls=HelpCommand)(detect_command.segment)
app.command("audit", cls=HelpCommand)(audit_command.audit)
app.command("report", cls=HelpCommand)(report_command.report)


def main() -> None:
    """Run the app (console-script entry point)."""
    app()


if __name__ == "__main__":
    main()
