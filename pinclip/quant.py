"""Embedding quantization: global affine int8 (README.md, int8 under "Results") and the schemes it is compared with.

Global affine int8 uses ONE scale `s` and zero-point `z` for every dimension of every vector:

    x_q  = clip(floor(x / s + z + 1/2), -128, 127)     int8 codes (round half up to the nearest cell)
    x_dq = s · (x_q − z)                                float reconstruction

`z` is a float. This is the paper's x_q = clip(round(x/s) + z) with the rounding written so that
it equals FAISS's `ScalarQuantizer` of type QT_8bit_uniform (one range for all dimensions), which
stores uint8 codes c = x_q + 128 and a range (vmin, vdiff), encodes c = floor(255·clip((x − vmin)/vdiff,
0, 1)) and decodes vmin + (c + 0.5)/255 · vdiff. With vdiff = 255·s and vmin = −s·(z + 128.5) the two
give the same codes bit for bit (`quantize` evaluates FAISS's float32 expression) and the same
reconstructions up to float rounding. Min/max calibration over [lo, hi] gives vmin = lo and
vdiff = hi − lo, exactly FAISS's own min/max training; inside [lo, hi] the error is at most s/2.
Re-encoding a reconstruction gives back its code, so an int8 shard can be re-added to any FAISS SQ
index without drift.

Calibrate on a sample that mixes image, text and fused pin embeddings, so that text queries are
not clipped when they are scored against an int8 pin or image index. `method="percentile"` clips
both tails at the given percentile instead of the extremes.

Comparison baselines: per-dimension affine int8 (FAISS QT_8bit, sentence-transformers' int8),
fp16, and binary sign codes scored by Hamming agreement.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

CODE_MIN, CODE_MAX = -128, 127
QUANT_SCHEME = "global_affine_int8"


@dataclass(frozen=True)
class GlobalAffine:
    """One scale and zero-point shared by all dimensions: x_dq = scale · (x_q − zero_point)."""

    scale: float
    zero_point: float
    method: str = "minmax"

    def to_dict(self) -> dict[str, Any]:
        return {"scale": float(self.scale), "zero_point": float(self.zero_point), "method": self.method}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GlobalAffine:
        try:
            scale, zero_point = float(d["scale"]), float(d["zero_point"])
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"quantization params need numeric 'scale' and 'zero_point': {err}") from err
        if not (np.isfinite(scale) and scale > 0 and np.isfinite(zero_point)):
            raise ValueError(f"invalid quantization params: scale={scale}, zero_point={zero_point}")
        return cls(scale=scale, zero_point=zero_point, method=str(d.get("method", "minmax")))


@dataclass(frozen=True)
class PerDimAffine:
    """One scale and zero-point per dimension (FAISS QT_8bit, sentence-transformers int8)."""

    scale: np.ndarray  # (D,)
    zero_point: np.ndarray  # (D,)


def _as_finite_2d(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2 or x.size == 0:
        raise ValueError(f"{name} must be a non-empty (N, D) array, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return x


def _calibration_range(x: np.ndarray, method: str, percentile: float, axis: int | None) -> tuple:
    """(lo, hi) of the sample, over everything (axis=None) or per dimension (axis=0)."""
    if method == "minmax":
        lo, hi = x.min(axis=axis), x.max(axis=axis)
    elif method == "percentile":
        if not 50.0 < percentile <= 100.0:
            raise ValueError(f"percentile must be in (50, 100], got {percentile}")
        lo, hi = np.percentile(x, [100.0 - percentile, percentile], axis=axis)
    else:
        raise ValueError(f"unknown calibration method {method!r}; use 'minmax' or 'percentile'")
    lo, hi = np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)
    pad = np.where(hi - lo > 0, 0.0, 1e-6 * np.maximum(1.0, np.abs(lo)))  # constant data: a tiny range
    return lo - pad, hi + pad


def _params_from_range(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scale and zero-point such that vmin = lo and vdiff = hi − lo in FAISS's terms."""
    scale = (hi - lo) / 255.0
    zero_point = -(lo / scale + 128.5)
    return scale, zero_point


def fit_global_affine(x: np.ndarray, method: str = "minmax", percentile: float = 99.99) -> GlobalAffine:
    """Calibrate one scale/zero-point on x (N, D), a sample mixing image, text and pin embeddings."""
    x = _as_finite_2d(x, "calibration sample")
    lo, hi = _calibration_range(x, method, percentile, axis=None)
    scale, zero_point = _params_from_range(lo, hi)
    return GlobalAffine(scale=float(scale), zero_point=float(zero_point), method=method)


def faiss_uniform_range(q: GlobalAffine) -> tuple[float, float]:
    """(vmin, vdiff) of the FAISS QT_8bit_uniform quantizer that reproduces q."""
    return -q.scale * (q.zero_point + 128.5), 255.0 * q.scale


def _encode(x: np.ndarray, vmin: np.ndarray, vdiff: np.ndarray) -> np.ndarray:
    """FAISS's 8-bit encoder in float32: floor(255 · clip((x − vmin) / vdiff, 0, 1)) − 128."""
    vmin32, vdiff32 = np.asarray(vmin, np.float32), np.asarray(vdiff, np.float32)
    unit = np.clip((x - vmin32) / vdiff32, np.float32(0.0), np.float32(1.0))  # (N, D) in [0, 1]
    cells = np.floor(np.float32(255.0) * unit).astype(np.int16)
    return (cells + CODE_MIN).astype(np.int8)


def quantize(x: np.ndarray, q: GlobalAffine) -> np.ndarray:
    """int8 codes (N, D) of float vectors x (N, D) under the global affine params q."""
    x = _as_finite_2d(x, "vectors to quantize")
    vmin, vdiff = faiss_uniform_range(q)
    return _encode(x, np.float64(vmin), np.float64(vdiff))


def dequantize(codes: np.ndarray, q: GlobalAffine) -> np.ndarray:
    """float32 reconstruction scale · (codes − zero_point), same shape as codes."""
    return (q.scale * (np.asarray(codes, dtype=np.float64) - q.zero_point)).astype(np.float32)


def _exact_int_dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Integer dot products a @ b.T of int8 codes, exact, as int32 (N, M).

    Float BLAS is exact on integers while every partial sum stays below 2^24 (float32) or 2^53
    (float64); |a_i·b_i| <= 2^14, so float32 is exact for D <= 1024 and float64 beyond.
    """
    dtype = np.float32 if a.shape[1] <= 1024 else np.float64
    return np.rint(a.astype(dtype) @ b.astype(dtype).T).astype(np.int32)  # (N, M)


def int8_scores(a_codes: np.ndarray, b_codes: np.ndarray, q: GlobalAffine, chunk: int = 4096) -> np.ndarray:
    """Inner products of the dequantized vectors, s²·(a − z)·(b − z), straight from int8 codes.

    Expands to s²·(a·b − z·Σa − z·Σb + D·z²): the integer part a·b is accumulated exactly in int32
    and the row sums carry the zero-point correction. Rows of a are processed `chunk` at a time.
    Returns float32 (N, M).
    """
    a_codes, b_codes = np.asarray(a_codes), np.asarray(b_codes)
    if a_codes.ndim != 2 or b_codes.ndim != 2 or a_codes.shape[1] != b_codes.shape[1]:
        raise ValueError(f"code arrays must be (N, D) and (M, D), got {a_codes.shape} and {b_codes.shape}")
    dim, z = a_codes.shape[1], q.zero_point
    b_sums = b_codes.astype(np.int64).sum(axis=1)  # (M,)
    out = np.empty((a_codes.shape[0], b_codes.shape[0]), dtype=np.float32)
    for start in range(0, a_codes.shape[0], chunk):
        a = a_codes[start : start + chunk]
        a_sums = a.astype(np.int64).sum(axis=1)  # (n,)
        dots = _exact_int_dot(a, b_codes).astype(np.float64)  # (n, M)
        correction = z * (a_sums[:, None] + b_sums[None, :]) - dim * z * z  # (n, M)
        out[start : start + chunk] = (q.scale**2) * (dots - correction)
    return out


def _faiss_scalar_quantizer(index_or_sq: Any) -> Any:
    """The ScalarQuantizer inside a FAISS index (flat, IVF or HNSW SQ), or the quantizer itself."""
    import faiss

    if isinstance(index_or_sq, faiss.ScalarQuantizer):
        return index_or_sq
    holder = index_or_sq
    if hasattr(holder, "storage"):  # IndexHNSWSQ keeps its codes in an IndexScalarQuantizer
        holder = faiss.downcast_index(holder.storage)
    if not hasattr(holder, "sq"):
        raise ValueError(f"{type(index_or_sq).__name__} holds no ScalarQuantizer")
    return holder.sq


def set_faiss_sq_range(index_or_sq: Any, q: GlobalAffine) -> None:
    """Set the trained range of a QT_8bit_uniform quantizer (or an index holding one) from q."""
    import faiss

    sq = _faiss_scalar_quantizer(index_or_sq)
    if sq.qtype != faiss.ScalarQuantizer.QT_8bit_uniform:
        raise ValueError("the FAISS quantizer must be QT_8bit_uniform to share one global range")
    faiss.copy_array_to_vector(np.array(faiss_uniform_range(q), dtype=np.float32), sq.trained)
    if isinstance(index_or_sq, faiss.IndexScalarQuantizer):
        index_or_sq.is_trained = True
    elif isinstance(index_or_sq, faiss.IndexHNSW):  # the graph needs no training, only its storage
        faiss.downcast_index(index_or_sq.storage).is_trained = True
        index_or_sq.is_trained = True


def faiss_sq_index(
    q: GlobalAffine,
    dim: int,
    kind: str = "flat",
    hnsw_m: int = 32,
    nlist: int = 1024,
    train_vectors: np.ndarray | None = None,
) -> Any:
    """An inner-product FAISS index with QT_8bit_uniform codes that decode exactly like `dequantize`.

    kind: "flat" (exact scan of codes), "hnsw" (graph over codes, M = hnsw_m) or "ivf" (nlist
    inverted lists without residuals, so every code uses the one global range; the coarse
    quantizer is trained on train_vectors, which "ivf" requires).
    """
    import faiss

    qtype, metric = faiss.ScalarQuantizer.QT_8bit_uniform, faiss.METRIC_INNER_PRODUCT
    if kind == "flat":
        index = faiss.IndexScalarQuantizer(dim, qtype, metric)
    elif kind == "hnsw":
        index = faiss.IndexHNSWSQ(dim, qtype, hnsw_m, metric)
    elif kind == "ivf":
        if train_vectors is None:
            raise ValueError("an IVF index needs train_vectors to place its lists")
        train_vectors = _as_finite_2d(train_vectors, "IVF training vectors")
        nlist = max(1, min(nlist, train_vectors.shape[0]))
        index = faiss.IndexIVFScalarQuantizer(faiss.IndexFlatIP(dim), dim, nlist, qtype, metric, False)
        index.train(train_vectors)
    else:
        raise ValueError(f"unknown FAISS index kind {kind!r}; use 'flat', 'hnsw' or 'ivf'")
    set_faiss_sq_range(index, q)
    return index


def to_faiss_codes(codes: np.ndarray) -> np.ndarray:
    """Our int8 codes (N, D) as the uint8 codes FAISS stores (x_q + 128), e.g. for add_sa_codes."""
    return (np.asarray(codes, dtype=np.int16) - CODE_MIN).astype(np.uint8)


def fit_per_dim_affine(x: np.ndarray, method: str = "minmax", percentile: float = 99.99) -> PerDimAffine:
    """Per-dimension scale/zero-point from the range of each column of x (N, D)."""
    x = _as_finite_2d(x, "calibration sample")
    lo, hi = _calibration_range(x, method, percentile, axis=0)  # (D,), (D,)
    scale, zero_point = _params_from_range(lo, hi)
    return PerDimAffine(scale=scale, zero_point=zero_point)


def quantize_per_dim(x: np.ndarray, q: PerDimAffine) -> np.ndarray:
    """int8 codes (N, D) with each dimension's own range (same rounding as `quantize`)."""
    x = _as_finite_2d(x, "vectors to quantize")
    if x.shape[1] != q.scale.shape[0]:
        raise ValueError(f"vectors have {x.shape[1]} dims, params have {q.scale.shape[0]}")
    return _encode(x, -q.scale * (q.zero_point + 128.5), 255.0 * q.scale)


def dequantize_per_dim(codes: np.ndarray, q: PerDimAffine) -> np.ndarray:
    """float32 reconstruction scale[d] · (codes[:, d] − zero_point[d])."""
    return (q.scale * (np.asarray(codes, dtype=np.float64) - q.zero_point)).astype(np.float32)


def to_fp16(x: np.ndarray) -> np.ndarray:
    """Half-precision copy (values beyond ±65504 saturate to ±65504 instead of becoming inf)."""
    limit = np.finfo(np.float16).max
    return np.clip(np.asarray(x, dtype=np.float32), -limit, limit).astype(np.float16)


def binarize(x: np.ndarray) -> np.ndarray:
    """Sign bits packed 8 per byte: (N, D) float -> (N, ceil(D / 8)) uint8 (bit set where x > 0)."""
    return np.packbits(np.asarray(x) > 0, axis=1)


def binary_scores(a_bits: np.ndarray, b_bits: np.ndarray, dim: int) -> np.ndarray:
    """Inner products of the ±1 sign vectors, D − 2·hamming, from packed bits: float32 (N, M)."""
    hamming = np.zeros((a_bits.shape[0], b_bits.shape[0]), dtype=np.int32)
    for byte in range(a_bits.shape[1]):
        xor = a_bits[:, byte, None] ^ b_bits[None, :, byte]  # (N, M)
        hamming += np.unpackbits(xor[..., None], axis=-1).sum(axis=-1, dtype=np.int32)
    return (dim - 2 * hamming).astype(np.float32)


def quant_to_json(q: GlobalAffine, model_version: str) -> dict[str, Any]:
    """JSON-safe record stored beside int8 vectors: params, model version and the FAISS range."""
    vmin, vdiff = faiss_uniform_range(q)
    return {
        "scheme": QUANT_SCHEME,
        "model_version": str(model_version),
        **q.to_dict(),
        "faiss_uniform_range": [vmin, vdiff],
    }


def quant_from_json(d: dict[str, Any]) -> GlobalAffine:
    """Params from a `quant_to_json` record (its model version stays in d["model_version"])."""
    if not isinstance(d, dict):
        raise ValueError(f"quantization record must be a JSON object, got {type(d).__name__}")
    scheme = d.get("scheme", QUANT_SCHEME)
    if scheme != QUANT_SCHEME:
        raise ValueError(f"unsupported quantization scheme {scheme!r}; expected {QUANT_SCHEME!r}")
    return GlobalAffine.from_dict(d)
