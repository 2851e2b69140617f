"""The errors a run stops with on purpose, beside bad input (``data.DataError``)."""

from __future__ import annotations


class Diverged(ArithmeticError):
    """The loss or the features stopped being finite numbers (NaN or inf): the weights are lost,
    and training on would only write broken checkpoints."""
