"""PCA whitening fitted batch by batch, for features too large to hold at full width.

``StreamingPCA`` accumulates the count, the sum and the sum of outer products of the features
while they are extracted (products of shifted features in float32, summed in float64, on the
features' device, all-reduced across processes), then takes the eigendecomposition of the
covariance once. It gives what scikit-learn's
``PCA(whiten=True)`` gives on the stacked features (the same components up to their sign, the
variances with N - 1 degrees of freedom), without ever holding the N x D matrix.
"""

from __future__ import annotations

import torch

from .distributed import all_reduce_sum, broadcast_from_rank0, is_distributed


class StreamingPCA:
    """Fit with ``update`` on each batch (then ``all_reduce`` under torch.distributed), then
    ``fit``; ``transform`` projects onto the top ``dim`` components, whitened to unit variance."""

    def __init__(self, dim: int):
        if dim < 1:
            raise ValueError(f"PCA dimension must be positive, got {dim}")
        self.dim = dim
        self.count = 0
        self.shift: torch.Tensor | None = None
        self.sum: torch.Tensor | None = None
        self.outer: torch.Tensor | None = None
        self.mean: torch.Tensor | None = None
        self.components: torch.Tensor | None = None  # (D, dim), columns by decreasing variance
        self.variances: torch.Tensor | None = None  # (dim,)

    def update(self, batch: torch.Tensor) -> None:
        """Add a (B, D) batch of features to the statistics."""
        batch = batch.detach().to(torch.float32)
        if self.sum is None:
            width = batch.shape[1]
            # Statistics of x - shift, with the first batch's mean as the shift: the products are
            # then well conditioned in float32 (twice as fast as float64), summed in float64.
            self.shift = batch.mean(dim=0)
            self.sum = torch.zeros(width, dtype=torch.float64, device=batch.device)
            self.outer = torch.zeros(width, width, dtype=torch.float64, device=batch.device)
        centred = batch - self.shift
        self.count += len(batch)
        self.sum += centred.sum(dim=0, dtype=torch.float64)
        self.outer += centred.T @ centred

    def all_reduce(self) -> None:
        """Sum the statistics of every process (each saw its own shard of the data)."""
        if not is_distributed():
            return
        shift = self.shift.clone()
        broadcast_from_rank0([shift])  # every process's statistics relative to rank 0's shift
        self.reshift(shift)
        count = torch.tensor([float(self.count)], dtype=torch.float64, device=self.sum.device)
        for tensor in (count, self.sum, self.outer):
            all_reduce_sum(tensor)
        self.count = int(count.item())

    def reshift(self, shift: torch.Tensor) -> None:
        """Express the statistics relative to another shift (x - s' = (x - s) + d, d = s - s')."""
        d = (self.shift - shift).to(torch.float64)
        self.outer += (torch.outer(self.sum, d) + torch.outer(d, self.sum)
                       + self.count * torch.outer(d, d))
        self.sum += self.count * d
        self.shift = shift.to(self.shift.dtype)

    def fit(self) -> "StreamingPCA":
        if self.sum is None or self.count < 2:
            raise ValueError("StreamingPCA needs at least 2 samples before fit()")
        width = self.sum.shape[0]
        if self.dim > min(self.count, width):
            raise ValueError(f"PCA dimension {self.dim} exceeds min(N={self.count}, D={width})")
        shifted_mean = self.sum / self.count
        covariance = ((self.outer - self.count * torch.outer(shifted_mean, shifted_mean))
                      / (self.count - 1))
        mean = shifted_mean + self.shift.to(torch.float64)
        eigenvalues, eigenvectors = torch.linalg.eigh(covariance)  # ascending order
        top = torch.arange(width - 1, width - 1 - self.dim, -1, device=mean.device)
        self.mean = mean
        self.components = eigenvectors[:, top]
        self.variances = eigenvalues[top].clamp_min(torch.finfo(torch.float64).eps)
        # Fitted in float64, applied in float32 (no float64 copy of each chunk).
        self._mean32 = mean.to(torch.float32)
        self._projection = (self.components / self.variances.sqrt()).to(torch.float32)
        return self

    def transform(self, features: torch.Tensor) -> torch.Tensor:
        """(B, D) features -> (B, dim) whitened projections, float32 (float16 features, e.g.
        spilled ones, are widened to float32 first)."""
        if self.components is None:
            raise RuntimeError("call fit() before transform()")
        return (features.to(torch.float32) - self._mean32) @ self._projection
