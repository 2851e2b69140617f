"""``deepcluster`` with the GroupNorm backbone of groupnorm.py, for runs started by torchrun."""

import sys

import deepcluster.methods.deepcluster as deepcluster_method
from deepcluster.cli import main
from groupnorm import without_batchnorm

deepcluster_method.build_backbone = without_batchnorm
sys.exit(main())
