import warnings

import numpy as np
import pytest
import torch

from deepcluster.datasets import load_dataset


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)
    np.random.seed(0)
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def fashion_train():
    """Fashion-MNIST's training split (scikit-learn's digits where the package is missing)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_dataset("fashion-mnist", "train")
