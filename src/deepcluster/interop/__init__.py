"""Reading other tools' checkpoints, and writing this tool's backbones for other tools.

- ``files``: a weights file's contents (``torch.load`` with ``weights_only=True``, or
  safetensors), with one-line errors for empty, truncated, foreign or code-running files;
- ``keymaps``: the renames between torchvision's (and the original code's) parameter names and
  this tool's ``Backbone`` names, both ways;
- ``layouts``: the known checkpoint layouts (MMSelfSup 1.x and 0.x, facebookresearch/deepcluster,
  flat ResNet state dicts, this tool's own), detected from the keys;
- ``importer``: a foreign checkpoint as this tool's own (config + backbone);
- ``network``: the backbone a state dict describes, loaded strictly, NaN/inf refused;
- ``export``: a backbone as a torchvision state dict or a safetensors file.

``docs/interop.md`` lists the layouts with their keys.
"""
