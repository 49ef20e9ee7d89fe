"""Tests for pinclip.quant: global affine int8 against FAISS, int8 scoring, and the baselines."""

from __future__ import annotations

import json

import faiss
import numpy as np
import pytest

from pinclip.eval.metrics import exact_topk
from pinclip.quant import (
    GlobalAffine,
    binarize,
    binary_scores,
    dequantize,
    dequantize_per_dim,
    faiss_sq_index,
    faiss_uniform_range,
    fit_global_affine,
    fit_per_dim_affine,
    int8_scores,
    quant_from_json,
    quant_to_json,
    quantize,
    quantize_per_dim,
    set_faiss_sq_range,
    to_faiss_codes,
    to_fp16,
)


def _unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture
def embeddings() -> np.ndarray:
    return _unit(np.random.default_rng(0).standard_normal((600, 48)))


def test_hand_computed_codes_and_values():
    # range [-1, 1.55]: s = 2.55 / 255 = 0.01, z = -(-1 / 0.01 + 128.5) = -28.5
    q = fit_global_affine(np.array([[-1.0, 1.55]], dtype=np.float32))
    assert q.scale == pytest.approx(0.01)
    assert q.zero_point == pytest.approx(-28.5)
    x = np.array([[-1.0, 0.004, 1.55, 5.0, -3.0]], dtype=np.float32)
    codes = quantize(x, q)
    assert codes.dtype == np.int8
    assert codes.tolist() == [[-128, -28, 127, 127, -128]]
    np.testing.assert_allclose(dequantize(codes, q), [[-0.995, 0.005, 1.555, 1.555, -0.995]], atol=1e-6)


def test_round_trip_error_is_at_most_half_a_step(embeddings):
    q = fit_global_affine(embeddings)
    codes = quantize(embeddings, q)
    error = np.abs(embeddings - dequantize(codes, q))
    assert error.max() <= q.scale / 2 + 1e-6
    assert codes.min() == -128 and codes.max() == 127  # min/max calibration uses the whole code range
    np.testing.assert_array_equal(quantize(dequantize(codes, q), q), codes)  # re-encoding is stable


def test_percentile_calibration_clips_both_tails():
    x = np.random.default_rng(1).uniform(-1, 1, size=(1000, 10)).astype(np.float32)
    x[0, 0], x[1, 1] = 50.0, -40.0
    minmax = fit_global_affine(x, "minmax")
    clipped = fit_global_affine(x, "percentile", percentile=99.9)
    assert clipped.method == "percentile"
    assert clipped.scale < minmax.scale / 20
    vmin, vdiff = faiss_uniform_range(clipped)
    assert -1.0 <= vmin < -0.99 and 0.99 < vmin + vdiff <= 1.0
    outliers = dequantize(quantize(x[:2], clipped), clipped)
    assert outliers[0, 0] == pytest.approx(vmin + vdiff + clipped.scale / 2, rel=1e-5)
    assert outliers[1, 1] == pytest.approx(vmin + clipped.scale / 2, rel=1e-5)


@pytest.mark.parametrize("method", ["minmax", "percentile"])
def test_codes_and_reconstruction_equal_faiss_uniform_sq(embeddings, method):
    q = fit_global_affine(embeddings[:300], method, percentile=99.0)  # rows 300+ also hit the clipping
    sq = faiss.ScalarQuantizer(embeddings.shape[1], faiss.ScalarQuantizer.QT_8bit_uniform)
    set_faiss_sq_range(sq, q)
    faiss_codes = sq.compute_codes(embeddings)
    ours = quantize(embeddings, q)
    np.testing.assert_array_equal(faiss_codes.astype(np.int16) - 128, ours)
    np.testing.assert_array_equal(to_faiss_codes(ours), faiss_codes)
    np.testing.assert_allclose(sq.decode(faiss_codes), dequantize(ours, q), rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_faiss_indexes_store_our_reconstruction(embeddings, kind):
    q = fit_global_affine(embeddings)
    index = faiss_sq_index(q, embeddings.shape[1], kind, hnsw_m=8, nlist=4, train_vectors=embeddings)
    index.add(embeddings)
    if kind == "ivf":
        index.make_direct_map()
        index.nprobe = 4  # all lists: the search is exhaustive
    np.testing.assert_allclose(
        index.reconstruct_n(0, 50), dequantize(quantize(embeddings[:50], q), q), rtol=0, atol=1e-6
    )
    if kind != "hnsw":  # exhaustive scans rank exactly like fp32 queries against dequantized vectors
        scores, ids = index.search(embeddings[:20], 5)
        ref_scores, _ = exact_topk(embeddings[:20], dequantize(quantize(embeddings, q), q), 5)
        np.testing.assert_allclose(scores, ref_scores, atol=1e-5)
        assert (ids[:, 0] == np.arange(20)).all()


def test_precomputed_codes_can_be_added_to_a_faiss_index(embeddings):
    q = fit_global_affine(embeddings)
    index = faiss_sq_index(q, embeddings.shape[1], "flat")
    index.add_sa_codes(to_faiss_codes(quantize(embeddings, q)))
    np.testing.assert_allclose(
        index.reconstruct_n(0, 10), dequantize(quantize(embeddings[:10], q), q), atol=1e-6
    )


def test_unknown_index_kind_and_wrong_quantizer_are_errors():
    q = GlobalAffine(scale=0.01, zero_point=0.0)
    with pytest.raises(ValueError, match="kind"):
        faiss_sq_index(q, 8, "lsh")
    with pytest.raises(ValueError, match="ivf|IVF"):
        faiss_sq_index(q, 8, "ivf")
    with pytest.raises(ValueError, match="QT_8bit_uniform"):
        set_faiss_sq_range(faiss.ScalarQuantizer(8, faiss.ScalarQuantizer.QT_8bit), q)


@pytest.mark.parametrize("dim", [48, 1100])  # 1100 > 1024 takes the float64 accumulation path
def test_int8_scores_equal_dequantized_matmul(dim):
    x = _unit(np.random.default_rng(2).standard_normal((70, dim)))
    q = fit_global_affine(x)
    codes = quantize(x, q)
    scores = int8_scores(codes[:30], codes[30:], q, chunk=7)
    assert scores.shape == (30, 40) and scores.dtype == np.float32
    deq = dequantize(codes, q).astype(np.float64)
    np.testing.assert_allclose(scores, deq[:30] @ deq[30:].T, rtol=0, atol=1e-5)


def test_nonfinite_input_is_rejected():
    with pytest.raises(ValueError, match="NaN"):
        fit_global_affine(np.array([[0.0, np.nan]]))
    with pytest.raises(ValueError, match="non-empty"):
        fit_global_affine(np.zeros((0, 4)))
    with pytest.raises(ValueError, match="method"):
        fit_global_affine(np.ones((2, 2)), method="mean")


def test_constant_calibration_sample_still_gives_a_valid_range():
    q = fit_global_affine(np.full((4, 3), 0.25, dtype=np.float32))
    assert q.scale > 0
    np.testing.assert_allclose(dequantize(quantize(np.full((1, 3), 0.25), q), q), 0.25, atol=1e-6)


def _paired_embeddings(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Images on the unit sphere; their captions share a component but live at 3x the norm."""
    rng = np.random.default_rng(seed)
    shared = rng.standard_normal((1000, 64))
    images = _unit(shared + 0.8 * rng.standard_normal(shared.shape))
    texts = 3.0 * _unit(shared + 0.8 * rng.standard_normal(shared.shape))
    return images, texts


def _int8_top1_agreement(texts: np.ndarray, images: np.ndarray, q: GlobalAffine) -> float:
    fp32_top1 = np.argmax(texts @ images.T, axis=1)
    int8_top1 = np.argmax(int8_scores(quantize(texts, q), quantize(images, q), q), axis=1)
    return float(np.mean(int8_top1 == fp32_top1))


def test_text_queries_retrieve_from_int8_image_index_with_mixed_calibration():
    images, texts = _paired_embeddings(seed=3)
    mixed = fit_global_affine(np.concatenate([images, texts]))
    image_only = fit_global_affine(images)
    mixed_agreement = _int8_top1_agreement(texts, images, mixed)
    assert mixed_agreement >= 0.99
    assert _int8_top1_agreement(texts, images, image_only) <= mixed_agreement
    text_error = {
        name: np.abs(dequantize(quantize(texts, q), q) - texts).mean()
        for name, q in (("mixed", mixed), ("image_only", image_only))
    }
    assert text_error["image_only"] > 3 * text_error["mixed"]  # texts outside the image range are clipped


def test_per_dim_affine_matches_faiss_qt8bit_and_bounds_error():
    rng = np.random.default_rng(4)
    x = (rng.standard_normal((500, 16)) * np.linspace(0.1, 2.0, 16)).astype(np.float32)
    q = fit_per_dim_affine(x)
    assert q.scale.shape == (16,) and q.zero_point.shape == (16,)
    codes = quantize_per_dim(x, q)
    assert (np.abs(x - dequantize_per_dim(codes, q)) <= q.scale / 2 + 1e-6).all()
    sq = faiss.ScalarQuantizer(16, faiss.ScalarQuantizer.QT_8bit)
    sq.train(x)
    np.testing.assert_array_equal(sq.compute_codes(x).astype(np.int16) - 128, codes)
    with pytest.raises(ValueError, match="dims"):
        quantize_per_dim(x[:, :8], q)


def test_per_dim_error_is_smaller_than_global_when_ranges_differ():
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((500, 16)) * np.linspace(0.1, 2.0, 16)).astype(np.float32)
    per_dim, single = fit_per_dim_affine(x), fit_global_affine(x)
    per_dim_error = np.abs(x - dequantize_per_dim(quantize_per_dim(x, per_dim), per_dim)).mean()
    global_error = np.abs(x - dequantize(quantize(x, single), single)).mean()
    assert per_dim_error < global_error


def test_fp16_and_binary_helpers():
    half = to_fp16(np.array([[1.0, 1e6, -1e6]]))
    assert half.dtype == np.float16 and half.tolist() == [[1.0, 65504.0, -65504.0]]
    a = np.array([[0.5, -0.2, 0.3]])
    b = np.array([[0.1, 0.4, -0.9], [0.2, -0.1, 0.7]])
    # signs: a = (+,-,+); b0 = (+,+,-) -> 1 - 1 - 1 = -1; b1 = (+,-,+) -> 3
    assert binary_scores(binarize(a), binarize(b), dim=3).tolist() == [[-1.0, 3.0]]
    x = np.random.default_rng(6).standard_normal((9, 21))
    signs = np.where(x > 0, 1.0, -1.0)
    np.testing.assert_array_equal(
        binary_scores(binarize(x[:4]), binarize(x[4:]), 21), signs[:4] @ signs[4:].T
    )


def test_json_record_round_trip_and_validation():
    q = GlobalAffine(scale=0.0123, zero_point=-3.25, method="percentile")
    record = json.loads(json.dumps(quant_to_json(q, model_version="pinclip-demo-7")))
    assert record["model_version"] == "pinclip-demo-7"
    assert record["scheme"] == "global_affine_int8"
    assert record["faiss_uniform_range"] == pytest.approx(list(faiss_uniform_range(q)))
    assert quant_from_json(record) == q
    assert GlobalAffine.from_dict(q.to_dict()) == q
    with pytest.raises(ValueError, match="scale"):
        quant_from_json({"zero_point": 1.0})
    with pytest.raises(ValueError, match="invalid"):
        quant_from_json({"scale": -1.0, "zero_point": 0.0})
    with pytest.raises(ValueError, match="scheme"):
        quant_from_json({**record, "scheme": "pq"})


def test_faiss_codes_shift_ours_by_128():
    codes = np.array([[-128, -1, 0, 127]], np.int8)
    assert to_faiss_codes(codes).tolist() == [[0, 127, 128, 255]] and to_faiss_codes(codes).dtype == np.uint8


def test_params_need_a_positive_scale_and_default_to_minmax():
    with pytest.raises(ValueError, match="invalid"):
        GlobalAffine.from_dict({"scale": 0.0, "zero_point": 0.0})
    assert GlobalAffine.from_dict({"scale": 0.5, "zero_point": 1.0}).method == "minmax"


def test_per_dim_percentile_default_clips_each_column_and_decodes_to_float32():
    x = np.random.default_rng(8).standard_normal((20000, 3)).astype(np.float32)
    x[0] = 50.0  # one outlier in every column
    clipped = fit_per_dim_affine(x, "percentile")  # 99.99th percentile by default
    hi = -clipped.scale * (clipped.zero_point + 128.5) + 255.0 * clipped.scale  # top of each column's range
    np.testing.assert_allclose(hi, np.percentile(x, 99.99, axis=0), rtol=1e-6)
    decoded = dequantize_per_dim(quantize_per_dim(x[:5], clipped), clipped)
    assert decoded.dtype == np.float32 and np.abs(decoded[1:] - x[1:5]).max() <= clipped.scale.max() / 2 + 1e-6


def test_fp16_rounds_through_float32_and_sign_bits_need_a_positive_value():
    # 1 + 2^-11 + 2^-30: float32 rounds it to the fp16 tie 1 + 2^-11, which rounds to even (1.0)
    assert to_fp16(np.array([[1 + 2**-11 + 2**-30]])).tolist() == [[1.0]]
    assert binarize(np.array([[0.0, 1e-9, -0.0, 3.0]])).tolist() == [[0b01010000]]  # zero is not positive
    assert binary_scores(binarize(np.ones((1, 8))), binarize(np.ones((2, 8))), 8).dtype == np.float32


def test_faiss_index_defaults_and_list_count():
    q = GlobalAffine(scale=0.01, zero_point=0.0)
    assert isinstance(faiss_sq_index(q, 8), faiss.IndexScalarQuantizer)  # "flat" by default
    hnsw = faiss_sq_index(q, 8, "hnsw")
    assert hnsw.hnsw.nb_neighbors(1) == 32 and hnsw.metric_type == faiss.METRIC_INNER_PRODUCT
    train = np.random.default_rng(9).standard_normal((50, 8)).astype(np.float32)
    assert faiss_sq_index(q, 8, "ivf", train_vectors=train).nlist == 50  # at most one list per vector
    assert faiss_sq_index(q, 8, "ivf", nlist=1, train_vectors=train).nlist == 1
    assert faiss_sq_index(q, 8, "ivf", nlist=20, train_vectors=train).metric_type == faiss.METRIC_INNER_PRODUCT


def test_int8_scores_stay_exact_past_float32_and_cover_every_row():
    # 1024 products of 16384 reach 2^24; one odd product more is not a float32 number any longer. With
    # zero-point -128 the dequantized vectors are (0, ..., 0, 255): the score is 255^2 exactly.
    a = np.full((1, 1025), -128, np.int8)
    a[0, -1] = 127
    assert int8_scores(a, a, GlobalAffine(scale=1.0, zero_point=-128.0))[0, 0] == 255.0**2
    q = GlobalAffine(scale=1.0, zero_point=0.0)
    codes = np.random.default_rng(10).integers(-128, 128, (9, 4)).astype(np.int8)  # more rows than dims
    np.testing.assert_allclose(int8_scores(codes, codes, q, chunk=2), codes.astype(np.float64) @ codes.T.astype(np.float64))
    with pytest.raises(ValueError, match="code arrays"):
        int8_scores(codes, codes[:, :3], q)
    with pytest.raises(ValueError, match="code arrays"):
        int8_scores(codes[0], codes, q)


def test_float64_input_is_encoded_as_its_float32_value_like_faiss():
    q = GlobalAffine(scale=0.01, zero_point=-28.5)  # vmin -1, cells of 0.01
    x = np.array([[-0.989999999, 0.25, 1.5]])  # the first is just above a cell edge in float64, on it in float32
    np.testing.assert_array_equal(quantize(x, q), quantize(x.astype(np.float32), q))
    sq = faiss.ScalarQuantizer(3, faiss.ScalarQuantizer.QT_8bit_uniform)
    set_faiss_sq_range(sq, q)
    np.testing.assert_array_equal(to_faiss_codes(quantize(x, q)), sq.compute_codes(x.astype(np.float32)))
    assert dequantize(quantize(x, q), q).dtype == np.float32


def test_calibration_ranges_by_hand():
    x = np.random.default_rng(11).standard_normal((2000, 4)).astype(np.float32)
    top = fit_global_affine(x, "percentile", percentile=100.0)  # the 100th percentile is the max
    assert (top.scale, top.zero_point) == (fit_global_affine(x).scale, fit_global_affine(x).zero_point)
    lo, hi = np.percentile(x, [0.01, 99.99])
    vmin, vdiff = faiss_uniform_range(fit_global_affine(x, "percentile"))  # 99.99 by default
    assert (vmin, vmin + vdiff) == (pytest.approx(lo, rel=1e-9), pytest.approx(hi, rel=1e-9))
    assert fit_global_affine(x, "percentile", percentile=50.5).scale > 0
    for bad in (50.0, 100.5):
        with pytest.raises(ValueError, match="percentile"):
            fit_global_affine(x, "percentile", percentile=bad)
    for value in (0.25, -5.0):  # constant data: a range of 1e-6 * max(1, |value|) on each side
        vmin, vdiff = faiss_uniform_range(fit_global_affine(np.full((2, 3), value, np.float32)))
        pad = 1e-6 * max(1.0, abs(value))
        assert (vmin, vdiff) == (pytest.approx(value - pad, rel=1e-12, abs=0), pytest.approx(2 * pad, rel=1e-6))


def test_errors_name_what_was_wrong():
    empty = np.zeros((0, 3))
    with pytest.raises(ValueError, match="^calibration sample must"):
        fit_global_affine(empty)
    with pytest.raises(ValueError, match="^calibration sample must"):
        fit_per_dim_affine(empty)
    q = GlobalAffine(scale=0.01, zero_point=0.0)
    with pytest.raises(ValueError, match="^vectors to quantize must"):
        quantize(empty, q)
    with pytest.raises(ValueError, match="^vectors to quantize must"):
        quantize_per_dim(empty, fit_per_dim_affine(np.ones((2, 3))))
    with pytest.raises(ValueError, match="^IVF training vectors must"):
        faiss_sq_index(q, 3, "ivf", train_vectors=empty)


def test_ivf_lists_default_to_1024():
    train = np.random.default_rng(12).standard_normal((1100, 4)).astype(np.float32)
    assert faiss_sq_index(GlobalAffine(scale=0.01, zero_point=0.0), 4, "ivf", train_vectors=train).nlist == 1024
