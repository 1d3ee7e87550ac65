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


COMMANDS = {
    "models": model_commands.models, "layers": model_commands.layers, "predict": predict_command.predict,
    "cam": cam_command.cam, "guided-backprop": guided_command.guided_backprop, "saliency": guided_command.saliency,
    "filters": filters_command.filters, "activations": filters_command.activations, "ascent": ascent_command.ascent,
    "index": gallery_command.index, "neighbours": gallery_command.neighbours, "tsne": gallery_command.tsne,
    "detect": detect_command.detect, "segment": detect_command.segment, "audit": audit_command.audit,
    "report": report_command.report,
}
"""Every command in the order ``--help`` lists them; each reads its ``--help`` cleanly (:class:`HelpCommand`)."""
for _name, _command in COMMANDS.items():
    app.command(_name, cls=HelpCommand)(_command)


def main() -> None:
    """Run the app (console-script entry point)."""
    app()


if __name__ == "__main__":
    main()
