"""Gaussian filtering in d dimensions with the permutohedral lattice, in plain PyTorch.

Adams, Baek, Davis, "Fast High-Dimensional Filtering Using the Permutohedral Lattice",
Eurographics 2010.

Every point (a pixel with its feature vector, already divided by the kernel's standard
deviations) is embedded in the hyperplane sum(x) = 0 of R^(d+1), where the lattice tiles space
with simplices. A filter is then three linear maps:

- splat: each point adds its value to the d+1 vertices of its simplex, weighted by its
  barycentric coordinates;
- blur: along each of the d+1 lattice directions, every vertex becomes v + (left + right) / 2;
- slice: each point reads the same d+1 vertices back with the same weights.

The lattice (which vertices exist, who their neighbours are, each point's weights) depends
only on the features, so `PermutohedralLattice.build` runs once per image and `filter` is
then reused for every mean-field iteration and for all K channels at once, as an (N, K) matrix.

The numbers follow Kraehenbuehl's densecrf (the code behind pydensecrf): the same elevation
scale sqrt(2/3) (d+1), the same rounding and tie-breaking when sorting the simplex, the same
[1/2, 1, 1/2] blur and its scale alpha = 1 / (1 + 2^-d). Matching these details is what lets
seglab agree with pydensecrf pixel for pixel, since the lattice is only an approximation of
the Gaussian.

Where seglab differs: the vertex hash table is replaced by one sort of integer vertex codes
and neighbour look-ups by `torch.searchsorted`, and splat, blur and slice are
`embedding_bag` gathers, so nothing loops over pixels and the same code runs on CPU and CUDA.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["PermutohedralLattice"]


def _elevate(features: Tensor) -> Tensor:
    """(N, d) features -> (N, d+1) points on the hyperplane sum = 0, scaled for a unit Gaussian.

    The scale makes the lattice blur approximate exp(-|fi - fj|^2 / 2) (Adams et al., p. 6).
    """
    n, d = features.shape
    inv_std_dev = math.sqrt(2.0 / 3.0) * (d + 1)
    i = torch.arange(d, device=features.device, dtype=features.dtype)
    scaled = features * (inv_std_dev / torch.sqrt((i + 1) * (i + 2)))
    # tail[k] = sum of scaled[k:], the running sum densecrf builds from the last feature down.
    tail = scaled.flip(1).cumsum(1).flip(1)
    elevated = torch.empty(n, d + 1, device=features.device, dtype=features.dtype)
    elevated[:, 0] = tail[:, 0]
    elevated[:, 1:d] = tail[:, 1:] - (i[:-1] + 1) * scaled[:, :-1]
    elevated[:, d] = -d * scaled[:, d - 1]
    return elevated


def _simplex(elevated: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Enclosing simplex of each elevated point.

    Returns rem0 (N, d+1) int64, the nearest 0-coloured lattice point; rank (N, d+1) int64,
    each coordinate's position when the residual is sorted in decreasing order; and
    barycentric (N, d+1) float weights of the simplex's d+1 vertices.
    """
    n, d1 = elevated.shape
    d = d1 - 1
    rounded = torch.round(elevated / d1)
    rem0 = rounded * d1
    excess = rounded.sum(1, keepdim=True).long()

    # Position of each coordinate in the residual sorted in decreasing order; a stable sort
    # ranks the earlier of two equal coordinates first, which is densecrf's tie-break.
    order = torch.sort(elevated - rem0, dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(order).scatter_(
        1, order, torch.arange(d1, device=order.device).expand(n, d1)
    )
    rank += excess

    # A point off the plane (excess != 0) is brought back by wrapping ranks around.
    rem0 = rem0.long()
    low = rank < 0
    high = rank > d
    rank = rank + d1 * low - d1 * high
    rem0 = rem0 + d1 * low - d1 * high

    # Barycentric coordinates (Adams et al., p. 10): d+2 slots, the last folds onto the first.
    value = (elevated - rem0.to(elevated.dtype)) / d1
    bary = torch.zeros(n, d + 2, device=elevated.device, dtype=elevated.dtype)
    bary.scatter_add_(1, d - rank, value)
    bary.scatter_add_(1, d + 1 - rank, -value)
    bary[:, 0] += 1.0 + bary[:, d + 1]
    return rem0, rank, bary[:, : d + 1]


@dataclass
class PermutohedralLattice:
    """A permutohedral lattice built once for N points in d dimensions, as gather-and-sum maps.

    Each of splat, blur and slice is a weighted sum of gathered rows, which is what
    `torch.nn.functional.embedding_bag` computes (with per-sample weights, on CPU and CUDA); on
    CPU it is several times faster than a sparse CSR product or index_add_ for these shapes.
    The M vertices are numbered in the sorted order of their keys: a blur step then reads its
    neighbours in increasing order (the key offset to a neighbour is a constant), which keeps
    the memory access streaming even when the lattice is larger than the cache.

    Attributes:
        splat_point: (N*(d+1),) int64, the points, grouped by the vertex they splat to.
        splat_offset: (M,) int64, where each vertex's group starts in splat_point.
        splat_weight: (N*(d+1),) float, their barycentric weights (times any pre-scaling).
        blur: d+1 triples (vertex (E,) int64, weight (E,) float, offset (M,) int64), one per
            lattice direction, applied in order: each vertex's bag is itself (weight 1) and its
            existing neighbours along that direction (weight 1/2).
        slice_vertex: (N, d+1) int64, the vertices of each point's simplex.
        slice_weight: (N, d+1) float, their barycentric weights times densecrf's
            alpha = 1 / (1 + 2^-d) (times any post-scaling).
    """

    splat_point: Tensor
    splat_offset: Tensor
    splat_weight: Tensor
    blur: list[tuple[Tensor, Tensor, Tensor]]
    slice_vertex: Tensor
    slice_weight: Tensor

    @property
    def num_vertices(self) -> int:
        return self.splat_offset.numel()

    @classmethod
    def build(cls, features: Tensor) -> PermutohedralLattice:
        """Lattice for features (N, d), already divided by the kernel's standard deviations."""
        features = features.float()
        device = features.device
        n, d = features.shape
        d1 = d + 1
        rem0, rank, weight = _simplex(_elevate(features))

        # Vertex r of a simplex is rem0 + r - d1 [rank > d - r] in each coordinate; only the
        # first d coordinates identify it (sum = 0 fixes the last). Each vertex is hashed to
        # one int64 code, a mixed-radix number in those coordinates, computed without forming
        # the keys. A margin of 2 d1 on every coordinate covers the canonical offsets and the
        # +-d steps to neighbours, so a neighbour's code cannot alias another vertex's.
        low = rem0[:, :d].amin(0) - 2 * d1
        span = rem0[:, :d].amax(0) + 2 * d1 - low + 1
        if float(torch.prod(span.double())) >= 2.0**62:
            raise ValueError("features span too large a lattice; scale them down")
        stride = torch.ones(d1, dtype=torch.long, device=device)
        stride[d] = 0
        for k in range(d - 2, -1, -1):
            stride[k] = stride[k + 1] * span[k + 1]
        base = (rem0[:, :d] - low) @ stride[:d]
        # by_rank[q] = stride of the coordinate whose rank is q; its suffix sums give, for
        # vertex r, the strides of the coordinates with rank > d - r.
        by_rank = torch.zeros_like(rank).scatter_(1, rank, stride.expand(n, d1))
        wrapped = by_rank.flip(1).cumsum(1)
        r = torch.arange(d1, device=device)
        codes = (
            base[:, None]
            + r * stride.sum()
            - d1 * torch.cat([torch.zeros_like(base)[:, None], wrapped[:, :d]], 1)
        )
        codes = codes.reshape(-1)
        if float(torch.prod(span.double())) < 2.0**31:
            codes = codes.int()  # halves the sort's memory traffic

        # One sort gives the vertices (unique codes), each entry's vertex and the splat groups.
        # (stable=True lets PyTorch use its radix sort for integers on CPU.)
        sorted_codes, by_vertex = torch.sort(codes, stable=True)
        vertex_codes, counts = torch.unique_consecutive(sorted_codes, return_counts=True)
        m = vertex_codes.numel()
        splat_offset = torch.zeros(m, dtype=torch.long, device=device)
        splat_offset[1:] = counts[:-1].cumsum(0)
        slice_vertex = torch.empty(n * d1, dtype=torch.long, device=device)
        slice_vertex[by_vertex] = torch.arange(m, device=device).repeat_interleave(counts)

        # Neighbours along direction j: key - 1 everywhere except key[j] + d, and the mirror.
        # The code is linear in the key, so the first is one constant offset, and the mirror
        # relation is its inverse: if b is a's first neighbour, a is b's second.
        step = d1 * stride - stride.sum()
        blur = []
        for j in range(d1):
            wanted = vertex_codes + step[j]
            found = torch.searchsorted(vertex_codes, wanted).clamp_(max=m - 1)
            first = torch.where(vertex_codes[found] == wanted, found, m)
            second = torch.full((m + 1,), m, dtype=torch.long, device=device)
            second[first] = torch.arange(m, device=device)
            # One weighted bag per vertex, v + (first + second) / 2, missing ones left out.
            bag = torch.stack([torch.arange(m, device=device), first, second[:m]], 1)
            present = bag < m
            offset = torch.zeros(m, dtype=torch.long, device=device)
            offset[1:] = present.sum(1)[:-1].cumsum(0)
            kept = present.view(-1).nonzero().squeeze(1)  # one nonzero for both gathers
            bag_weight = torch.where(kept % 3 == 0, 1.0, 0.5)
            blur.append((bag.view(-1)[kept], bag_weight, offset))

        alpha = 1.0 / (1.0 + 2.0**-d)
        return cls(
            splat_point=torch.div(by_vertex, d1, rounding_mode="floor"),
            splat_offset=splat_offset,
            splat_weight=weight.reshape(-1)[by_vertex],
            blur=blur,
            slice_vertex=slice_vertex.view(n, d1),
            slice_weight=alpha * weight,
        )

    def scaled(self, before: Tensor, after: Tensor) -> PermutohedralLattice:
        """The filter diag(after) F diag(before), with the scalings folded into the weights.

        before, after: (N,). Folding makes a normalised, weighted filter cost nothing extra.
        """
        return replace(
            self,
            splat_weight=self.splat_weight * before[self.splat_point],
            slice_weight=self.slice_weight * after[:, None],
        )

    @classmethod
    def stack(cls, lattices: list[PermutohedralLattice]) -> PermutohedralLattice:
        """One lattice whose filter is the sum of the given lattices' filters (same N points).

        The vertex sets are kept apart (block-diagonal), a lattice with fewer blur directions
        copies its vertices through the extra ones, and each point's slice reads all its
        simplices at once. Summing the CRF's two kernels this way halves the number of
        gather passes per mean-field iteration.
        """
        bases = [0]
        for lattice in lattices:
            bases.append(bases[-1] + lattice.num_vertices)
        blur = []
        for j in range(max(len(lattice.blur) for lattice in lattices)):
            bags, weights, offsets, used = [], [], [], 0
            for lattice, base in zip(lattices, bases, strict=False):
                if j < len(lattice.blur):
                    bag, weight, offset = lattice.blur[j]
                else:
                    bag = torch.arange(lattice.num_vertices, device=lattice.splat_point.device)
                    weight = torch.ones(bag.shape, device=bag.device)
                    offset = bag
                bags.append(bag + base)
                weights.append(weight)
                offsets.append(offset + used)
                used += bag.numel()
            blur.append((torch.cat(bags), torch.cat(weights), torch.cat(offsets)))
        splat_sizes = [lattice.splat_point.numel() for lattice in lattices]
        splat_starts = torch.tensor([0, *splat_sizes[:-1]]).cumsum(0).tolist()
        return cls(
            splat_point=torch.cat([lattice.splat_point for lattice in lattices]),
            splat_offset=torch.cat(
                [
                    lat.splat_offset + start
                    for lat, start in zip(lattices, splat_starts, strict=True)
                ]
            ),
            splat_weight=torch.cat([lattice.splat_weight for lattice in lattices]),
            blur=blur,
            slice_vertex=torch.cat(
                [lat.slice_vertex + base for lat, base in zip(lattices, bases, strict=False)], 1
            ),
            slice_weight=torch.cat([lattice.slice_weight for lattice in lattices], 1),
        )

    def filter(self, values: Tensor) -> Tensor:
        """Approximate sum_j exp(-|fi - fj|^2 / 2) values[j] for values (N, K) -> (N, K)."""
        values = values.contiguous()
        lattice = F.embedding_bag(
            self.splat_point,
            values,
            self.splat_offset,
            mode="sum",
            per_sample_weights=self.splat_weight,
        )
        # The blur and slice run in the dtype of the slice weights (see with_vertex_dtype).
        lattice = lattice.to(self.slice_weight.dtype)
        for bag, bag_weight, offset in self.blur:
            lattice = F.embedding_bag(
                bag, lattice, offset, mode="sum", per_sample_weights=bag_weight
            )
        out = F.embedding_bag(
            self.slice_vertex, lattice, mode="sum", per_sample_weights=self.slice_weight
        )
        return out.to(values.dtype)

    def with_vertex_dtype(self, dtype: torch.dtype) -> PermutohedralLattice:
        """The same lattice storing vertex values in `dtype` between splat and slice.

        float16 halves the memory traffic of the blur, the largest pass on big lattices, for
        a relative error of about 1e-3 in the filtered values.
        """
        return replace(
            self,
            blur=[(bag, weight.to(dtype), offset) for bag, weight, offset in self.blur],
            slice_weight=self.slice_weight.to(dtype),
        )
