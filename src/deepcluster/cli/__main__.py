"""``python -m deepcluster.cli`` (what torchrun runs: ``torchrun ... -m deepcluster.cli pretrain``)."""

import sys

from . import main

sys.exit(main())
