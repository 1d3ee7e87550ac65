"""What every command shares: option types, model loading from options, input collection, progress, output.

Commands parse options, call the library, print, and map exceptions to exit codes:
0 success; 1 some inputs failed but others succeeded; 2 bad usage or nothing could be done.
"""

from __future__ import annotations

import functools
import inspect
import os
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar, get_args, get_origin

import typer
from typer.core import TyperArgument, TyperCommand, TyperGroup
from typer.models import ParameterInfo

from explain.errors import ExplainError, InputError, ModelError, UsageError
from explain.manifest import PARTIAL_MANIFEST_NAME, Manifest, begin_output, output_lock
from explain.run import RunInterrupted, RunSettings, keep_finished

if TYPE_CHECKING:
    from explain.backbones.base import Backbone
    from explain.images import ImageFile

EXIT_OK, EXIT_PARTIAL, EXIT_USAGE = 0, 1, 2

# --- option types -----------------------------------------------------------------------------------------
ImagesArg = Annotated[list[str], typer.Argument(help="Image files and/or folders (walked recursively, sorted).",
                                                show_default=False)]
ModelOpt = Annotated[str, typer.Option("--model", "-m", help="Backbone name; 'cnn-explain models' lists them.")]
WeightsOpt = Annotated[str | None, typer.Option(
    help="Torchvision weights name (e.g. IMAGENET1K_V2, DEFAULT), 'none' for random weights, or a checkpoint "
         "file. Default: the model's own (packaged for the embedded model).", show_default=False)]
ClassesOpt = Annotated[Path | None, typer.Option(help="File with one class name per line (custom models).",
                                                 show_default=False)]
NumClassesOpt = Annotated[int | None, typer.Option(min=1, max=100_000,
                                                   help="Number of classes of a checkpoint / random model.",
                                                   show_default=False)]
TrustOpt = Annotated[bool, typer.Option(
    "--trust-checkpoint", help="Allow a pickled checkpoint that runs code when loaded. Only for files you trust.")]
DeviceOpt = Annotated[str, typer.Option(help="auto | cpu | cuda | mps (an unavailable device is an error).")]
BatchOpt = Annotated[int, typer.Option(min=1, help="Images per forward pass.")]
WorkersOpt = Annotated[int, typer.Option(min=0, help="Processes decoding images in parallel with the model.")]
SEED_MAX = 2**32 - 1
"""Largest ``--seed``: NumPy's seeds are 32-bit (torch would take 64 bits, NumPy refuses them)."""


def _seed_in_range(value: int) -> int:
    """Refuse a seed NumPy cannot take. Checked here rather than with ``min``/``max``, which Typer prints in the
    options table as ``[0<=x<=4294967295]``: the widest entry of that column, split over two lines at 80 columns."""
    if not 0 <= value <= SEED_MAX:
        raise typer.BadParameter(f"{value} is not a seed: give a whole number from 0 to {SEED_MAX}")
    return value


SeedOpt = Annotated[int, typer.Option(callback=_seed_in_range, help=(
    f"Random seed (random weights, sampling), 0 to {SEED_MAX}."))]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the manifest as JSON on stdout instead of tables.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help=(
    "No progress bar, summary tables or notes; errors and warnings still go to stderr. predict keeps its tables: "
    "they are its result."))]
OutOpt = Annotated[Path, typer.Option("--out", "-o", help="Output folder (manifest.json lists every file).")]
_FIG = "Figures"
DpiOpt = Annotated[int, typer.Option(
    "--dpi", help="Resolution of PNG figures (and of the images in SVG/PDF ones), 30 to 1200; 300 for print.",
    rich_help_panel=_FIG)]
TitleOpt = Annotated[bool, typer.Option(
    "--title/--no-title", help="Draw each figure's title (input, target, method, layer); --no-title for a paper, "
                               "whose caption says it. Panel labels stay.", show_default=False, rich_help_panel=_FIG)]
TitlePathOpt = Annotated[bool, typer.Option(
    "--title-path/--no-title-path", help="Name the input in titles by its path as given; --no-title-path: by its "
                                         "file name only (no folders in a published figure).", show_default=False,
    rich_help_panel=_FIG)]


ANY_TASK = ("classification", "detection", "segmentation")
"""For commands that only look at a model's layers or weights (``layers``, ``filters``)."""


@dataclass
class ModelOptions:
    """The model-related options of a command."""

    model: str
    weights: str | None = None
    classes: Path | None = None
    num_classes: int | None = None
    trust_checkpoint: bool = False
    device: str = "auto"
    seed: int = 0
    tasks: tuple[str, ...] = ("classification",)
    """The kinds of model the command works with; another kind is a clear ModelError naming the right command."""

    def load(self, meta: bool = False) -> tuple[Backbone, Any]:
        """Load the backbone and move it to the resolved device: ``(backbone, torch.device)``.

        Args:
            meta: with random weights, build the model on PyTorch's meta device (shapes only, no memory, no
                initialisation cost); for commands that only need the architecture. Falls back to a real build
                for architectures that cannot be built on meta.
        """
        import torch

        from explain.backbones import load_backbone
        from explain.device import resolve_device

        torch.manual_seed(self.seed)

        def build() -> Backbone:
            backbone = load_backbone(self.model, self.weights, num_classes=self.num_classes, classes=self.classes,
                                     trust_checkpoint=self.trust_checkpoint)
            task = str(backbone.extra.get("task", "classification"))
            if task not in self.tasks:
                command = {"detection": "detect", "segmentation": "segment", "classification": "cam"}.get(task)
                hint = f"; use 'cnn-explain {command}' for it" if command else ""
                raise ModelError(f"{self.model} is a {task} model and this command explains "
                                 f"{' or '.join(self.tasks)} models{hint}")
            return backbone

        device = resolve_device(self.device)  # an unavailable --device is an error even for a shapes-only build
        if meta and (self.weights or "").lower() == "none":
            try:
                with torch.device("meta"):
                    return build(), torch.device("meta")
            except (NotImplementedError, RuntimeError):
                pass
        backbone = build()
        backbone.model.to(device)
        return backbone, device


# --- speaking to the user ---------------------------------------------------------------------------------
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
"""What must never reach a terminal raw: C0/C1 control characters (ESC sequences, newlines, carriage returns), the
Unicode line separators and bidirectional overrides (text that reads differently from what it is), and the lone
surrogates that stand for undecodable bytes in file names."""
_NAMED_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def terminal_text(value: object) -> str:
    """``value`` as text that prints as what it is: every unprintable character (:data:`_UNPRINTABLE`) becomes a
    visible escape (``\\n``, ``\\x1b``, ``\\u202e``), so a file name cannot move the cursor, colour the terminal or
    print a fake line. Every line the CLI prints goes through it (:func:`stderr_line`, :func:`say`,
    :func:`print_table`); Rich markup is off in :func:`console`, so brackets (``cnn-explain[lite]``) print as they are.
    """
    def escape(match: re.Match[str]) -> str:
        char = match.group()
        code = ord(char)
        return _NAMED_ESCAPES.get(char) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")

    return _UNPRINTABLE.sub(escape, str(value))


def stderr_line(message: str) -> None:
    """One line on stderr (unprintable characters escaped: :func:`terminal_text`)."""
    sys.stderr.write(terminal_text(message).rstrip() + "\n")
    sys.stderr.flush()


def say(message: str) -> None:
    """One line of the command's output on stdout (unprintable characters escaped, no Rich markup)."""
    console().print(terminal_text(message))


def fail(message: str, code: int = EXIT_USAGE) -> typer.Exit:
    """Print ``error: message`` and return the exit to raise."""
    stderr_line(f"error: {message}")
    return typer.Exit(code)


F = TypeVar("F", bound=Callable[..., Any])


def handle_errors(func: F) -> F:
    """Turn library exceptions into one clear line and exit code 2; never show a traceback for a user mistake.

    Unexpected exceptions also become one line (with the exception type); set ``CNN_EXPLAIN_DEBUG=1`` to see the
    traceback.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            with _terminate_as_interrupt(), _command_scope():
                return func(*args, **kwargs)
        except typer.Exit:
            raise
        except InputError as exc:
            raise fail(str(exc)) from None
        except ExplainError as exc:
            raise fail(str(exc)) from None
        except KeyboardInterrupt as exc:
            hint = str(exc.args[0]) if exc.args and isinstance(exc.args[0], str) else ""
            raise fail("interrupted" + (f": {hint}" if hint else ""), 130) from None
        except MemoryError:
            raise fail("out of memory: try a smaller --batch-size") from None
        except Exception as exc:  # noqa: BLE001 - the last line of defence of the CLI
            if os.environ.get("CNN_EXPLAIN_DEBUG"):
                raise
            raise fail(f"unexpected {type(exc).__name__}: {exc} (set CNN_EXPLAIN_DEBUG=1 for the traceback)") from None

    return wrapper  # type: ignore[return-value]


_SCOPE: ContextVar[ExitStack | None] = ContextVar("cnn_explain_command_scope", default=None)
"""What the running command holds until it ends (the lock of its output folder): released by :func:`handle_errors`
however the command ends, before its error line is printed."""


@contextmanager
def _command_scope() -> Iterator[None]:
    with ExitStack() as stack:
        token = _SCOPE.set(stack)
        try:
            yield
        finally:
            _SCOPE.reset(token)


def claim_output(out: Path) -> Path:
    """Check the output folder before the model loads and hold it until the command ends
    (:func:`explain.manifest.output_lock`, which checks it as :func:`explain.manifest.check_output_folder` does), so
    that a second run into the same folder stops at once with "OUT is in use by another cnn-explain run (pid N)"
    instead of overwriting this one's files.

    Raises:
        RuntimeError: called outside a command wrapped by :func:`handle_errors` (a programming error).
    """
    scope = _SCOPE.get()
    if scope is None:
        raise RuntimeError("claim_output() needs a command wrapped by handle_errors")
    return scope.enter_context(output_lock(out))


@contextmanager
def interrupt_hint(hint: str) -> Iterator[None]:
    """Add ``hint`` to the "interrupted" line if Ctrl-C (or SIGTERM) stops the block, e.g. how to resume."""
    try:
        yield
    except KeyboardInterrupt as exc:
        raise KeyboardInterrupt(hint) from exc


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that every ``finally`` (temporary files, hooks, model state) runs."""


@contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """While a command runs, turn SIGTERM (``kill``, ``timeout``) into an interrupt instead of an abrupt exit."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def raise_interrupt(signum: int, frame: object) -> None:
        raise _Terminated

    previous = signal.signal(signal.SIGTERM, raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@dataclass(frozen=True)
class RunArgs:
    """The run options of a command: batching, output folder and what is printed."""

    batch_size: int = 8
    workers: int | None = 0
    out: Path | None = None
    as_json: bool = False
    quiet: bool = False
    style: Any = None
    """The figures' :class:`explain.figures.FigureStyle` (``--dpi --title --title-path``) of a figure command."""


_KW = inspect.Parameter.KEYWORD_ONLY
_INJECTED = ("model_options", "run")
OMIT: Any = object()
"""For :func:`model_command`: leave this option out of the command."""


def model_command(
    *,
    model: str | None = "efficientnet_lite0",
    model_option: Any = ModelOpt,
    tasks: tuple[str, ...] = ("classification",),
    batch_size: int = 8,
    batch_option: Any = BatchOpt,
    workers: int | None = 0,
    workers_option: Any = WorkersOpt,
    out: Path = Path("cnn-explain-out"),
    out_option: Any = OutOpt,
    figures: bool = False,
) -> Callable[[F], F]:
    """Give a Typer command the options every model command shares, declared once here.

    The command declares two keyword-only parameters instead of a dozen options, ``model_options: ModelOptions``
    and ``run: RunArgs``; this decorator replaces them in the command's signature (which Typer reads) by
    ``--model --weights --classes --num-classes --trust-checkpoint --device`` [``--batch-size``] [``--workers``]
    [``--out``] ``--seed --json --quiet``, after the command's own options, and builds the two objects on each call.

    Args:
        model: the default ``--model`` (``None``: the command decides, e.g. from a stored index).
        model_option: the ``--model`` option's annotation.
        tasks: the kinds of model the command works with (:attr:`ModelOptions.tasks`).
        batch_size: the default ``--batch-size``; :data:`OMIT` leaves the option out.
        batch_option: the ``--batch-size`` option's annotation.
        workers: the default ``--workers``; :data:`OMIT` leaves the option out.
        workers_option: the ``--workers`` option's annotation.
        out: the default ``--out``; :data:`OMIT` leaves the option out.
        out_option: the ``--out`` option's annotation (help text, flags).
        figures: the command draws figures: add ``--dpi --title/--no-title --title-path/--no-title-path``, given
            to the command as ``run.style`` (:func:`figure_style`).
    """
    shared: list[tuple[str, Any, Any]] = [
        ("model", model_option, model), ("weights", WeightsOpt, None), ("classes", ClassesOpt, None),
        ("num_classes", NumClassesOpt, None), ("trust_checkpoint", TrustOpt, False), ("device", DeviceOpt, "auto"),
    ]
    for name, annotation, default in (("batch_size", batch_option, batch_size), ("workers", workers_option, workers),
                                      ("out", out_option, out)):
        if default is not OMIT:
            shared.append((name, annotation, default))
    if figures:
        shared += [("dpi", DpiOpt, 150), ("title", TitleOpt, True), ("title_path", TitlePathOpt, True)]
    shared += [("seed", SeedOpt, 0), ("json_", JsonOpt, False), ("quiet", QuietOpt, False)]
    added = {name for name, _, _ in shared}

    def decorate(func: F) -> F:
        own = inspect.signature(func, eval_str=True)
        missing = [name for name in _INJECTED if name not in own.parameters]
        if missing:
            raise TypeError(f"{func.__name__} must declare {', '.join(missing)}")
        clash = sorted(added & set(own.parameters))
        if clash:
            raise TypeError(f"{func.__name__} declares shared options itself: {', '.join(clash)}")
        params = [p.replace(kind=_KW) for name, p in own.parameters.items() if name not in _INJECTED]
        params += [inspect.Parameter(name, _KW, annotation=annotation, default=default)
                   for name, annotation, default in shared]
        params = [_as_read(p) for p in params]

        @functools.wraps(func)
        def command(**kwargs: Any) -> Any:
            if "out" in kwargs:
                kwargs["out"] = output_folder(kwargs["out"])
            options = ModelOptions(kwargs.pop("model"), kwargs.pop("weights"), kwargs.pop("classes"),
                                   kwargs.pop("num_classes"), kwargs.pop("trust_checkpoint"), kwargs.pop("device"),
                                   kwargs.pop("seed"), tasks)
            run = RunArgs(*(kwargs.pop(name) if name in added else fallback
                            for name, fallback in (("batch_size", 1), ("workers", 0), ("out", None))),
                          kwargs.pop("json_"), kwargs.pop("quiet"),
                          figure_style(kwargs.pop("dpi"), kwargs.pop("title"), kwargs.pop("title_path")) if figures
                          else None)
            return func(**kwargs, model_options=options, run=run)

        signature = own.replace(parameters=params)
        command.__signature__ = signature  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params} | {"return": own.return_annotation}
        return command  # type: ignore[return-value]

    return decorate


def figure_style(dpi: int, title: bool, title_path: bool) -> Any:
    """The :class:`explain.figures.FigureStyle` of ``--dpi --title/--no-title --title-path/--no-title-path``.

    Raises:
        UsageError: ``--dpi`` out of bounds.
    """
    from explain.figures import FigureStyle  # NumPy and Matplotlib helpers: not needed for --help

    return FigureStyle(dpi=dpi, title=title, title_path=title_path).check()


def output_folder(value: str | Path | None) -> Path | None:
    """The ``--out`` folder; an empty or blank value is a usage error (as a path it would mean the current folder).

    Raises:
        UsageError: ``--out ""``.
    """
    if value is None:
        return None
    if isinstance(value, str) and not value.strip():
        raise UsageError("--out is empty: give the output folder a name, e.g. --out results")
    return Path(value)


def finite_float(low: float | None, high: float | None) -> Callable[[str], float]:
    """The parser of a float option: a finite number within ``[low, high]``, or an error that says which rule failed
    (``nan`` is not a number to compare; Typer's own check reads "should be less than or equal to 1" for it)."""

    def parse(text: str | float) -> float:
        try:
            value = float(text)
        except ValueError:
            raise typer.BadParameter(f"{text!r} is not a number") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise typer.BadParameter(f"{text!r} is not a finite number")
        if low is not None and value < low:
            raise typer.BadParameter(f"{text} is below {low:g}: give a number from {low:g}"
                                     + (f" to {high:g}" if high is not None else " up"))
        if high is not None and value > high:
            raise typer.BadParameter(f"{text} is above {high:g}: give a number "
                                     + (f"from {low:g} to {high:g}" if low is not None else f"up to {high:g}"))
        return value

    return parse


def _as_read(param: inspect.Parameter) -> inspect.Parameter:
    """How Typer reads one parameter of a model command: ``--out`` as text, so that :func:`output_folder` can refuse
    an empty one (as a path it would silently be ``.``); every float option through :func:`finite_float`."""
    annotation = param.annotation
    if get_origin(annotation) is not Annotated:
        return param
    base, *meta = get_args(annotation)
    info = next((m for m in meta if isinstance(m, ParameterInfo)), None)
    if info is None:
        return param
    if param.name == "out":
        info.metavar = info.metavar or "DIR"
        default = param.default if isinstance(param.default, str | type(None)) or param.default is param.empty \
            else str(param.default)
        return param.replace(annotation=Annotated[(str | None, *meta)], default=default)
    if float in (base, *get_args(base)) and info.parser is None:
        info.parser = finite_float(info.min, info.max)
    return param


_TYPE_WORDS = {"str": "TEXT", "int": "INTEGER", "float": "NUMBER", "path": "PATH"}


class _NamedArgument(TyperArgument):
    """An argument shown in ``--help`` by its name alone (``IMAGES``), without Typer's ``<list[str]>``, and in the
    usage line as ``IMAGES...`` (required) or ``[GALLERY]`` (optional) rather than ``{IMAGES}...``."""

    def display_type_rich(self, ctx: Any) -> str | None:
        return None

    def get_usage_pieces(self, ctx: Any) -> list[str]:
        name = self.metavar if self.required else f"[{self.metavar}]"
        return [name + ("..." if self.nargs != 1 else "")]


def _readable_metavars(params: list[Any], ctx: Any) -> list[Any]:
    """Give every parameter without a metavar one that reads like a manual page: ``IMAGES``, ``--alpha NUMBER``,
    ``--target TEXT``, nothing after a flag (Typer would show ``<list[str]>``, ``<float range>``, ``<bool>``)."""
    for param in params:
        if param.metavar is not None:
            continue
        if isinstance(param, TyperArgument):
            param.metavar = (param.name or "").upper()
            param.__class__ = _NamedArgument
        elif getattr(param, "is_flag", False):
            param.metavar = ""
        else:
            shown = str(param.display_type(ctx)).strip("<>")
            param.metavar = _TYPE_WORDS.get(shown.removeprefix("list[").removesuffix("]").removesuffix(" range"))
    return params


class HelpCommand(TyperCommand):
    """A command whose ``--help`` reads cleanly (:func:`_readable_metavars`)."""

    def get_params(self, ctx: Any) -> list[Any]:
        return _readable_metavars(super().get_params(ctx), ctx)


class HelpGroup(TyperGroup):
    """The command group, with :class:`HelpCommand`'s ``--help``."""

    def get_params(self, ctx: Any) -> list[Any]:
        return _readable_metavars(super().get_params(ctx), ctx)


def check_out_is_not_an_input(out: Path | None, inputs: Sequence[str | Path]) -> None:
    """Refuse an output folder that is an input folder or holds an input, at any depth (``cam photos/a.jpg --out
    photos``): the run's outputs would be read as inputs next time, and its ``manifest.json`` would make later walks
    skip the photos beside it. An output folder inside an input folder is fine: walks skip it."""
    if out is None or not Path(out).is_dir():
        return
    target = Path(out).resolve()
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            folder = path.resolve()
            if folder == target:
                raise UsageError(f"--out {out} is also an input folder: the next run would read this run's outputs "
                                 "as inputs; write to another folder (a sub-folder of the input is fine: walks skip "
                                 "it)")
        elif path.exists():
            folder = path.absolute().parent.resolve()  # where the file is listed (a link may point elsewhere)
        else:
            continue
        if folder == target or target in folder.parents:
            raise UsageError(f"--out {out} holds the input {item}: outputs and inputs would mix; write to another "
                             "folder (a new sub-folder is fine: walks skip it)")


def collect_images(inputs: Sequence[str], out: Path | None = None) -> tuple[list[ImageFile], list[InputError]]:
    """Find the image files among ``inputs``; fail with exit 2 when there is nothing to work on.

    Args:
        inputs: the IMAGES argument.
        out: the run's output folder: folder walks do not enter it, so a previous run's outputs written inside an
            input folder are not read back as inputs (it is still walked when named explicitly).
    """
    from explain.images import find_images

    check_out_is_not_an_input(out, inputs)
    files, errors = find_images(inputs, exclude=() if out is None else (out,))
    if not files and not errors:
        raise UsageError(f"no images found in {', '.join(inputs)} (looked for .jpg .jpeg .png .webp .bmp .tif .gif)")
    return files, errors


def report_target_notes(targets: Sequence[str], class_names: Sequence[str]) -> None:
    """A stderr note for every ``--target`` class name taken by a word or a prefix of a class name
    (:func:`explain.targets.match_notes`)."""
    from explain.targets import match_notes

    for note in match_notes(targets, class_names):
        stderr_line(f"note: {note}")


def report_warnings(warnings: Sequence[str]) -> None:
    """One stderr line per run-level warning (also with ``--quiet``: they are in the manifest too)."""
    for warning in warnings:
        stderr_line(f"warning: {warning}")


def report_errors(errors: Sequence[dict[str, str]]) -> None:
    """One stderr line per failed input."""
    for err in errors:
        stderr_line(f"skipped {err['input']}: {err['error']}")


def exit_code(n_ok: int, n_failed: int) -> int:
    """0 if everything worked, 1 if some inputs failed, 2 if nothing could be done (nothing produced at all, e.g.
    a detector that found nothing in any photo, counts as that too)."""
    if n_ok == 0:
        return EXIT_USAGE
    return EXIT_PARTIAL if n_failed else EXIT_OK


def finish(manifest: Manifest, out: Path | None, as_json: bool, n_ok: int, quiet: bool = False) -> None:
    """Write the manifest (last), print it with ``--json`` (else say where it is, unless ``quiet``), report the
    run's warnings and failed inputs, and exit with the right code."""
    if out is not None:
        manifest.save(out)
    if as_json:
        sys.stdout.write(manifest.to_json() + "\n")
    elif out is not None and not quiet and n_ok:  # with nothing produced, the error line below says it all
        stderr_line(f"outputs in {out}{os.sep} (manifest.json lists them)")
    report_warnings(manifest.warnings)
    report_errors(manifest.errors)
    code = exit_code(n_ok, len(manifest.errors))
    if n_ok == 0 and not manifest.errors:
        stderr_line("error: nothing was produced for any input" + (" (see the warnings above)"
                                                                   if manifest.warnings else ""))
    if code:
        raise typer.Exit(code)


def save_finished(manifest: Manifest, out: Path | None, total: int) -> str:
    """After Ctrl-C: write the finished inputs' items to ``manifest.partial.json`` (:func:`explain.run.keep_finished`)
    and return what the "interrupted" line says was left. No ``manifest.json`` is written: it means a complete run."""
    finished = keep_finished(manifest, out, total)
    if out is None:
        return f"{finished} of {total} inputs finished; nothing was written"
    if not finished:
        return f"no input was finished, so {out} has no manifest (the files written so far are not listed)"
    partial = manifest.save(out, PARTIAL_MANIFEST_NAME)
    return (f"{finished} of {total} inputs finished: {partial} lists them; there is no manifest.json, as the run is "
            f"incomplete (the other {total - finished} are not listed); run the command again to finish it")


def run_image_command(
    images: Sequence[str],
    model_options: ModelOptions,
    run: RunArgs,
    label: str,
    execute: Callable[[Backbone, list[ImageFile], RunSettings], Manifest],
    prepare: Callable[[Backbone], object] | None = None,
    summarize: Callable[[Manifest], None] | None = None,
    summary_is_result: bool = False,
    targets: Sequence[str] = (),
) -> None:
    """The body every image command shares: find inputs, check the output folder, load the model, check options,
    start the output folder (:func:`explain.manifest.begin_output`), run with a progress bar, report, write the
    manifest last and exit with the right code.

    Args:
        images: the IMAGES argument.
        model_options: the model-related options.
        run: batch size, workers, output folder (``None``: no manifest written), ``--json`` (print the manifest
            instead of the summary) and ``--quiet`` (no progress bar, no summary).
        label: progress-bar label.
        execute: ``(backbone, files, settings) -> Manifest``: the library call.
        prepare: validates every option against the loaded backbone before any work (raises on a bad one).
        summarize: prints the human summary of a finished run.
        summary_is_result: the summary is the command's result (predict's tables), so ``--quiet`` keeps it.
        targets: the ``--target`` values: a class name taken by a word or a prefix gets a note on stderr (unless
            quiet).
    """

    if run.out is not None:
        claim_output(run.out)  # before the (slow) model load
    files, find_errors = collect_images(images, run.out)
    not_found = [{"input": e.path, "error": e.reason} for e in find_errors]
    backbone, device = model_options.load()
    if prepare is not None:
        prepare(backbone)
    if not run.quiet:
        report_target_notes(targets, backbone.class_names)
    if run.out is not None:
        begin_output(run.out)  # every option is checked: the previous run's manifest goes, the outputs come
    try:
        with progress_bar(len(files), label, run.quiet) as advance:
            settings = RunSettings(batch_size=run.batch_size, device=device, workers=run.workers,
                                   argv=["cnn-explain", *sys.argv[1:]], on_batch=advance, input_errors=find_errors)
            manifest = execute(backbone, files, settings)
    except RunInterrupted as exc:
        exc.manifest.errors[:0] = not_found
        raise KeyboardInterrupt(save_finished(exc.manifest, run.out, len(files) + len(find_errors))) from None
    manifest.errors[:0] = not_found
    if summarize is not None and not run.as_json and (summary_is_result or not run.quiet):
        summarize(manifest)
    finish(manifest, run.out, run.as_json, len({item["input"] for item in manifest.items}), run.quiet)


def target_summary(manifest: Manifest, out: Path, output_key: str) -> None:
    """A table of explained targets: input, target, score and the main output file of each item."""
    from rich.table import Table

    table = Table(show_edge=False, pad_edge=False)
    for col in ("input", "target", "score", output_key):
        table.add_column(col)
    for item in manifest.items:
        t = item["target"]
        label = f"{t['index']} {t['name']}" if "index" in t else t["neuron"]
        table.add_row(item["input"], label, f"{t['score']:.3g}", str(out / item["outputs"][output_key]))
    print_table(table)


def console() -> Any:
    """A rich console on stdout; when stdout is not a terminal (pipes, files, tests), wide enough for tables.

    Markup and emoji codes are off: what is printed (file names, class names, ``pip install 'cnn-explain[lite]'``)
    is shown as it is, never read as ``[style]`` or ``:emoji:``."""
    from rich.console import Console

    return Console(highlight=False, markup=False, emoji=False, width=None if sys.stdout.isatty() else 200)


def print_table(table: Any, out: Any = None) -> None:
    """Print a rich table; in a narrow terminal long cells (layer names, model names, paths) wrap onto more lines
    instead of being cut to "…", so every name can still be copied into an option. An empty table (nothing was
    produced: the reason is on stderr) is not printed. Every cell and the title are made terminal-safe
    (:func:`terminal_text`); the console is :func:`console`'s, without markup, unless ``out`` is given."""
    if not table.row_count:
        return
    if isinstance(table.title, str):
        table.title = terminal_text(table.title)
    for column in table.columns:
        column.overflow = "fold"
        column.header = terminal_text(column.header) if isinstance(column.header, str) else column.header
        column._cells = [terminal_text(c) if isinstance(c, str) else c for c in column._cells]  # no public setter
    (out or console()).print(table)


@contextmanager
def progress_bar(total: int, description: str, quiet: bool) -> Iterator[Callable[[int], None]]:
    """A rich progress bar on stderr (silent with ``--quiet`` or when stderr is not a terminal).

    Yields:
        ``advance(n)``: mark ``n`` more inputs as done.
    """
    if quiet or not sys.stderr.isatty() or total <= 1:
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import Progress

    with Progress(*progress_columns(), console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task(description, total=total)
        yield functools.partial(advance_with_eta, progress, task)


def progress_columns(label: str = "{task.description}") -> tuple[Any, ...]:
    """The columns of every progress bar: the label (``label``, a format of the task, printed without markup), the
    bar, ``done/total`` and the time left (:func:`eta_column`)."""
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn

    return TextColumn(label, markup=False), BarColumn(), MofNCompleteColumn(), eta_column()()


def advance_with_eta(progress: Any, task: Any, n: int) -> None:
    """Advance ``task`` of ``progress`` by ``n``; the first advance is remembered (``first``: elapsed seconds and
    work done then) so that :func:`eta_column` can leave out what was done at once, such as a resumed audit's
    finished images."""
    progress.advance(task, n)
    state = next(t for t in progress.tasks if t.id == task)
    if "first" not in state.fields:
        progress.update(task, first=(state.elapsed or 0.0, state.completed))


@functools.cache
def eta_column() -> type:
    """The class of the "time left" column (made on first use: Rich is imported only when a bar is shown).

    Rich's own column measures the pace over the last 30 seconds and needs two updates inside that window, so work
    whose steps take longer (an audit batch, a report batch, on a CPU) never shows an estimate. This one keeps the
    whole run: the pace since the first update (what was done before it, e.g. resumed work, is not counted), or,
    until a second update, the pace since the start.
    """
    from rich.progress import ProgressColumn
    from rich.text import Text

    class EtaColumn(ProgressColumn):
        """``eta H:MM:SS`` at the pace of the run so far; ``eta -:--:--`` until something is done."""

        def render(self, task: Any) -> Text:
            if task.total is None or task.finished:
                return Text("")
            elapsed, done = task.elapsed or 0.0, task.completed
            first_time, first_done = task.fields.get("first", (0.0, 0.0))
            if done > first_done and elapsed > first_time:
                rate = (done - first_done) / (elapsed - first_time)
            else:
                rate = done / elapsed if elapsed > 0 else 0.0
            if rate <= 0:
                return Text("eta -:--:--", style="progress.remaining")
            minutes, seconds = divmod(round((task.total - done) / rate), 60)
            return Text(f"eta {minutes // 60}:{minutes % 60:02d}:{seconds:02d}", style="progress.remaining")

    return EtaColumn
