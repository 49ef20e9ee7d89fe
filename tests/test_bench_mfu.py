"""The training benchmark's FLOP accounting: bucket widths, padding FLOPs, and real-token FLOPs checked
against counting a step whose every row is encoded at its own length."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.train_mfu import (  # noqa: E402
    bucket_widths,
    count_flops,
    encoder_row_coeffs,
    encoder_rows,
    make_step,
    padding_flops,
    quadratic_through,
    row_flops,
    token_slots,
    training_setup,
)


def test_quadratic_through_three_points():
    coeffs = quadratic_through((1, 2, 4), [6.0, 11.0, 27.0])  # 3 + 2 x + x^2
    assert coeffs == pytest.approx([3.0, 2.0, 1.0])
    assert row_flops(coeffs, np.array([0, 1, 3])) == pytest.approx(3 + 6 + 18)


def test_bucket_widths_pad_each_sorted_bucket_to_its_longest_row():
    lengths = np.array([5, 1, 3, 2, 7])  # sorted: 1 2 | 3 5 | 7
    assert bucket_widths(lengths, 0, 2).tolist() == [6, 3, 6, 3, 8]  # summary token + longest of the bucket
    assert bucket_widths(lengths, 4, 5).tolist() == [12] * 5  # one bucket, 4 visual tokens before the text
    assert bucket_widths(np.array([0, 0]), 4, 2).tolist() == [5, 5]  # image-only pins: summary + visual
    assert bucket_widths(np.array([0, 0]), 0, 2).tolist() == [2, 2]  # a text bucket is at least one token wide


def test_padding_flops_and_token_slots_by_hand():
    coeffs = np.array([0.0, 1.0, 0.0])  # one FLOP per token: padding FLOPs = padded slots
    lengths = np.array([1, 4, 2])
    passes = [(lengths, 0, 1 + lengths)]  # real widths 2 5 3
    assert padding_flops(coeffs, passes, rows=3) == 15 - 10  # every row at width 5
    assert padding_flops(coeffs, passes, rows=2) == (3 + 3 + 5) - 10  # buckets 1 2 | 4
    assert padding_flops(coeffs, passes, rows=1) == 0
    assert token_slots(passes, 3) == (10, 15)
    attention = np.array([0.0, 0.0, 1.0])  # L^2: 25 * 3 - (4 + 25 + 9)
    assert padding_flops(attention, passes, rows=3) == 75 - 38


@pytest.mark.slow
def test_real_token_flops_equal_a_count_with_one_row_per_bucket():
    model, cfg, batch, optimizer, scheduler, _ = training_setup(8, preset="tiny")
    coeffs = encoder_row_coeffs(model)
    passes = encoder_rows(batch, model.num_visual, fused=cfg.model.pin_mode != "late")

    def counted(rows: int) -> int:
        return count_flops(make_step(model, cfg, batch, optimizer, scheduler, bf16=False, rows=rows,
                                     step_optimizer=False))[0]

    padded = counted(128)
    assert padding_flops(coeffs, passes, 128) > 0
    assert padded - padding_flops(coeffs, passes, 128) == pytest.approx(counted(1), rel=1e-9)
    assert padded - padding_flops(coeffs, passes, 128) == pytest.approx(counted(3) - padding_flops(coeffs, passes, 3),
                                                                        rel=1e-9)
