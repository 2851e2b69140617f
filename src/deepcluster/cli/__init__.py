"""The ``deepcluster`` command line. Every click command lives in this package; the library
modules it calls are usable from Python without click."""

from __future__ import annotations

import sys
import warnings

import click

from ..data import DataError


class _FriendlyErrors(click.Group):
    """Bad input ends with one clear line, not a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (DataError, ValueError, FileNotFoundError, NotImplementedError) as error:
            raise click.ClickException(str(error)) from error


@click.group(cls=_FriendlyErrors)
def main() -> None:
    """DeepCluster self-supervised pretraining and the standard feature benchmarks."""
    warnings.filterwarnings("ignore", message=".*Experiment logs directory.*")


# The commands, one module per family (imported for their registration on ``main``).
from . import benchmark, data, pretrain  # noqa: E402,F401

if __name__ == "__main__":
    sys.exit(main())
