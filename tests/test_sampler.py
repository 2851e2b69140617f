import numpy as np

from deepcluster.sampler import uniform_cluster_indices


def unbalanced_assignments():
    # One huge cluster, several tiny ones, and cluster ids 3 and 7 left empty.
    return np.array([0] * 900 + [1] * 10 + [2] * 5 + [4] * 60 + [5] * 20 + [6] * 3 + [8] * 2)


def test_every_non_empty_cluster_gets_the_same_share():
    assignments = unbalanced_assignments()
    indices = uniform_cluster_indices(assignments, len(assignments), seed=0)
    assert len(indices) == len(assignments)
    counts = np.bincount(assignments[indices], minlength=9)
    assert counts[3] == 0 and counts[7] == 0
    non_empty = counts[[0, 1, 2, 4, 5, 6, 8]]
    # 1000 samples over 7 clusters: 143 drawn each, then the shuffled draw is cut to 1000.
    per_cluster = len(assignments) // 7 + 1
    assert non_empty.max() <= per_cluster
    assert non_empty.min() >= per_cluster - 20
    # The big cluster no longer dominates: it had 90% of the images.
    assert counts[0] / len(indices) < 0.16


def test_large_clusters_without_replacement_small_with():
    assignments = unbalanced_assignments()
    indices = uniform_cluster_indices(assignments, len(assignments), seed=1)
    big = indices[assignments[indices] == 0]
    assert len(np.unique(big)) == len(big)  # 900 members > 143 draws: no repeats
    tiny = indices[assignments[indices] == 8]
    assert set(tiny) <= set(np.flatnonzero(assignments == 8))
    assert len(tiny) > 2  # two members drawn many times


def test_padding_to_a_longer_epoch():
    assignments = unbalanced_assignments()
    indices = uniform_cluster_indices(assignments, 3 * len(assignments) + 7, seed=2)
    assert len(indices) == 3 * len(assignments) + 7
    assert indices.min() >= 0 and indices.max() < len(assignments)
    assert set(np.unique(assignments[indices])) == {0, 1, 2, 4, 5, 6, 8}


def test_same_seed_same_order():
    assignments = unbalanced_assignments()
    a, b, c = (uniform_cluster_indices(assignments, len(assignments), seed) for seed in (5, 5, 6))
    assert a.tolist() == b.tolist() and a.tolist() != c.tolist()
