"""``deepcluster convert`` and ``export``, and the ``--format`` option of every command that
takes ``--checkpoint`` (``docs/interop.md``)."""

from __future__ import annotations

import functools

import click

from ..checkpoint import load_checkpoint, reading_as, save_checkpoint
from ..console import console
from ..interop.export import EXPORT_FORMATS, export_backbone
from ..interop.layouts import FORMATS
from . import main

FORMAT_CHOICES = ("auto",) + FORMATS
FORMAT_HELP = ("layout of the checkpoint file: auto (detected from its keys), deepcluster (this "
               "tool's), mmselfsup (0.x and 1.x), original (facebookresearch/deepcluster), resnet "
               "(torchvision, timm, SwAV / DeepCluster-v2 state dicts)")


def checkpoint_format_option(command=None, *, flag: str = "--format", param: str = "checkpoint"):
    """Add ``--format`` to a command: its ``param`` file is read as that layout throughout the
    command (``checkpoint.reading_as``)."""
    def decorate(function):
        @functools.wraps(function)
        def run(*args, checkpoint_format: str, **kwargs):
            with reading_as(kwargs[param], checkpoint_format):
                return function(*args, **kwargs)
        return click.option(flag, "checkpoint_format", type=click.Choice(FORMAT_CHOICES),
                            default="auto", show_default=True, help=FORMAT_HELP)(run)
    return decorate(command) if command is not None else decorate


@main.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="this tool's checkpoint (config + backbone), read by every command")
@checkpoint_format_option(param="file")
def convert(file: str, out: str) -> None:
    """Import a checkpoint of another tool (MMSelfSup, the original DeepCluster, torchvision,
    timm, SwAV / DeepCluster-v2) as this tool's own."""
    state = load_checkpoint(file)
    save_checkpoint(state, out)
    config, imported = state["config"], state.get("imported", {})
    how = (f"{imported['layout']} layout ({imported['variant']})" if imported
           else "already this tool's checkpoint")
    console.print(f"{file}: {how}; {config['arch']}{' + Sobel' if config['sobel'] else ''}, "
                  f"{len(state['backbone'])} backbone tensors, evaluated at "
                  f"{config['image_size']} px")
    if imported.get("dropped"):
        console.print(f"left out (not part of the backbone): {imported['dropped']}")
    console.print(f"checkpoint: {out}")


@main.command()
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False))
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="the weights file (FILE.json beside it holds the config)")
@click.option("--format", "export_format", type=click.Choice(EXPORT_FORMATS),
              default="torchvision", show_default=True,
              help="torchvision: a torch.save state dict that the matching torchvision model "
                   "loads (Sobel pair as 'sobel.*'); safetensors: the same tensors as safetensors")
@checkpoint_format_option(flag="--input-format")
def export(checkpoint: str, out: str, export_format: str) -> None:
    """Write a checkpoint's backbone for other tools (docs/interop.md shows how to load it)."""
    written = export_backbone(checkpoint, out, export_format)
    console.print(f"{written.weights}: {written.tensors} tensors in {written.keys} names "
                  f"({written.model}); config: {written.sidecar}")
    if written.note:
        console.print(written.note)
