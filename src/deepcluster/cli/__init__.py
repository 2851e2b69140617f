"""The ``deepcluster`` command line. Every click command lives in this package; the library
modules it calls are usable from Python without click."""

from __future__ import annotations

import sys
import warnings

import click

from ..data import DataError
from ..engine.run_lock import RunLocked
from ..errors import Diverged


EXPECTED = (DataError, ValueError, OSError, NotImplementedError, Diverged, RunLocked)


class _FriendlyErrors(click.Group):
    """Every error ends in one line and exit code 1 (usage errors: 2, Ctrl-C: 130), without a
    traceback unless ``--debug``."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except KeyboardInterrupt:
            click.echo("interrupted (a run keeps its last checkpoint: --resume continues it)",
                       err=True)
            raise click.exceptions.Exit(130) from None
        except Exception as error:
            if ctx.params.get("debug"):
                raise
            raise click.ClickException(one_line(error)) from error


def one_line(error: BaseException) -> str:
    """``error`` as one line: the tool's own errors as they are, others with their type and a
    hint for the known ones."""
    text = " ".join(str(error).split()) or repr(error)
    if isinstance(error, EXPECTED):
        return text
    if "DataLoader worker" in text:
        return (f"{text} (a data-loader worker was killed, most often for lack of memory: try "
                "fewer --workers or a smaller batch)")
    return f"{type(error).__name__}: {text} (--debug shows the traceback)"


@click.group(cls=_FriendlyErrors)
@click.option("--debug", is_flag=True, help="show the full traceback of an error")
def main(debug: bool) -> None:
    """DeepCluster self-supervised pretraining and the standard feature benchmarks."""
    warnings.filterwarnings("ignore", message=".*Experiment logs directory.*")
    warnings.formatwarning = one_line_warning


def one_line_warning(message, category, filename, lineno, line=None) -> str:
    """A warning as the tool's own line, without the source line Python adds."""
    return f"warning: {' '.join(str(message).split())}\n"


# The commands, one module per family (imported for their registration on ``main``).
from . import benchmark, data, interop, pretrain, report  # noqa: E402,F401

if __name__ == "__main__":
    sys.exit(main())
