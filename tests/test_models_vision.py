"""region_means (the regional tokens, written as slices for ONNX export) against adaptive average pooling."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pinclip.models.vision import region_means


def test_overlapping_cells_by_hand():
    grid = torch.arange(9, dtype=torch.float32).view(1, 1, 3, 3)  # 3x3 into 2x2: rows and columns 0-1 and 1-2
    assert region_means(grid, 2).flatten().tolist() == [2.0, 3.0, 5.0, 6.0]  # means of (0,1,3,4), (1,2,4,5), ...


@pytest.mark.parametrize("h,w,regions", [(7, 7, 2), (5, 6, 3), (4, 4, 2), (7, 7, 1)])
def test_equals_adaptive_average_pooling(h, w, regions):
    grid = torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(0))
    pooled = F.adaptive_avg_pool2d(grid, regions).flatten(2).transpose(1, 2)  # (B, r*r, C)
    torch.testing.assert_close(region_means(grid, regions), pooled)
