"""PinIndex: exact vs ANN recall, codes stored exactly, adds without rebuild, refusals, save/load, CLI."""

from __future__ import annotations

import numpy as np
import pytest
from serve_fakes import FakeEmbedder, synthetic_pins, write_pins_parquet

from pinclip.cli import main
from pinclip.quant import GlobalAffine, dequantize, fit_global_affine, quantize
from pinclip.serve.embed import embed_pins_table
from pinclip.serve.index import (
    IndexConfig,
    PinIndex,
    PinIndexError,
    choose_kind,
    exact_top_k,
    load_embeddings,
    recall_at_k,
)


def unit_vectors(n: int, dim: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def random_codes() -> tuple[np.ndarray, list[str], GlobalAffine]:
    x = unit_vectors(3000, 64, seed=0)
    quant = fit_global_affine(x)
    return quantize(x, quant), [f"r{i}" for i in range(len(x))], quant


def test_exact_top_k_and_recall_by_hand():
    base = np.array([[1, 0], [0, 1], [0.6, 0.8], [-1, 0]], dtype=np.float32)
    queries = np.array([[1, 0], [0, 1]], dtype=np.float32)
    # scores row 0: [1, 0, .6, -1] -> 0, 2 ; row 1: [0, 1, .8, 0] -> 1, 2
    assert exact_top_k(queries, base, 2).tolist() == [[0, 2], [1, 2]]
    assert exact_top_k(queries, base, 2, exclude=np.array([0, 1])).tolist() == [[2, 1], [2, 0]]
    assert recall_at_k(np.array([[0, 2], [1, 3]]), np.array([[0, 2], [1, 2]])) == pytest.approx(0.75)


def test_auto_kind_follows_size():
    config = IndexConfig(flat_max=100)
    assert [choose_kind(n, config) for n in (99, 100, 5_000_000)] == ["flat", "ivf", "ivf"]
    assert choose_kind(10, IndexConfig(kind="hnsw")) == "hnsw"
    with pytest.raises(PinIndexError, match="unknown index kind"):
        choose_kind(10, IndexConfig(kind="lsh"))


def test_flat_index_stores_our_codes_and_matches_exact_search(random_codes):
    codes, ids, quant = random_codes
    index = PinIndex.build(codes[:500], ids[:500], quant, "v1", config=IndexConfig(kind="flat"))
    stored = dequantize(codes[:500], quant)  # (N, D)
    assert np.allclose(index.vector("r7"), stored[7], atol=1e-6)
    queries = unit_vectors(20, 64, seed=1)
    scores, found = index.search(queries, 10)
    truth = exact_top_k(queries, stored, 10)
    assert found == [[ids[i] for i in row] for row in truth.tolist()]
    assert np.allclose(scores, np.take_along_axis(queries @ stored.T, truth, axis=1), atol=1e-5)


def test_hnsw_recall_at_10_vs_exact_is_at_least_095(random_codes):
    codes, ids, quant = random_codes
    index = PinIndex.build(codes, ids, quant, "v1", config=IndexConfig(kind="hnsw"))
    assert index.meta.kind == "hnsw" and index.meta.params["tuned_recall_at_10"] >= 0.95
    queries = unit_vectors(200, 64, seed=2)  # fresh queries, not the tuning sample
    truth = exact_top_k(queries, dequantize(codes, quant), 10)
    _, found = index.search(queries, 10)
    found_rows = np.array([[int(p[1:]) for p in row] for row in found])
    assert recall_at_k(found_rows, truth) >= 0.95


def test_ivf_is_tuned_and_supports_lookup_and_add(random_codes):
    codes, ids, quant = random_codes
    index = PinIndex.build(codes[:2000], ids[:2000], quant, "v1", config=IndexConfig(kind="ivf"))
    assert index.meta.params["nlist"] == 51 and index.meta.params["tuned_recall_at_10"] >= 0.95
    assert np.allclose(index.vector("r5"), dequantize(codes[5], quant), atol=1e-6)
    index.add_codes(codes[2000:2001], ["r2000"], "v1", quant)
    _, found = index.search(dequantize(codes[2000:2001], quant), 1)
    assert found == [["r2000"]]


def clustered(n: int, dim: int, centers: np.ndarray, spread: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = centers[rng.integers(0, len(centers), n)] + spread * rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_ivf_tuned_on_the_runs_own_queries_needs_fewer_lists_and_keeps_recall_on_fresh_ones():
    """Pins in clusters, text-like queries off them (shifted toward other directions): tuned on a sample of
    such queries, nprobe is smaller than tuned on random directions, and fresh queries of the same kind
    still reach recall@10 >= 0.95."""
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((40, 32)).astype(np.float32)
    pins = clustered(4000, 32, centers, 0.35, seed=1)
    shift = rng.standard_normal(32).astype(np.float32)
    texts = lambda seed: clustered(600, 32, centers + 0.8 * shift, 0.6, seed)  # noqa: E731
    quant = fit_global_affine(pins)
    codes, ids = quantize(pins, quant), [f"p{i}" for i in range(len(pins))]
    config = IndexConfig(kind="ivf")
    on_texts = PinIndex.build(codes, ids, quant, "v1", config=config, tune_queries=texts(2))
    on_random = PinIndex.build(codes, ids, quant, "v1", config=config)
    assert on_texts.meta.params["tune_off_index_queries"] == "text and image embeddings"
    assert on_random.meta.params["tune_off_index_queries"] == "random directions"
    assert on_texts.meta.params["nprobe"] < on_random.meta.params["nprobe"]  # 4 vs 8 lists here
    fresh = texts(3)[:300]
    truth = exact_top_k(fresh, dequantize(codes, quant), 10)
    _, found = on_texts.search(fresh, 10)
    assert recall_at_k(np.array([[int(p[1:]) for p in row] for row in found]), truth) >= 0.95


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_added_pin_is_found_without_rebuild(random_codes, kind):
    codes, ids, quant = random_codes
    index = PinIndex.build(codes[:1000], ids[:1000], quant, "v1", config=IndexConfig(kind=kind))
    fresh = unit_vectors(1, 64, seed=3)
    index.add_vectors(fresh, ["fresh"])
    assert len(index) == 1001 and index.meta.size == 1001
    _, found = index.search(fresh, 3)
    assert found[0][0] == "fresh"
    scores, related = index.search_by_id("fresh", 5)
    assert "fresh" not in related and len(related) == 5 and np.all(np.diff(scores) <= 0)
    _, with_self = index.search_by_id("fresh", 5, exclude_self=False)
    assert with_self[0] == "fresh"


def test_mixing_versions_quantization_or_ids_is_refused(random_codes):
    codes, ids, quant = random_codes
    index = PinIndex.build(codes[:100], ids[:100], quant, "v1", config=IndexConfig(kind="flat"))
    with pytest.raises(PinIndexError, match="model v1.*model v2"):
        index.add_codes(codes[100:101], ["new"], "v2", quant)
    other = GlobalAffine(quant.scale * 2, quant.zero_point)
    with pytest.raises(PinIndexError, match="quantization params differ"):
        index.add_codes(codes[100:101], ["new"], "v1", other)
    with pytest.raises(PinIndexError, match="already in the index or repeated: r3"):
        index.put(codes[100:102], ["new", "r3"], replace=False)
    with pytest.raises(PinIndexError, match="repeated: twice"):
        index.add_codes(codes[100:102], ["twice", "twice"], "v1", quant)
    assert len(index) == 100  # nothing half-added


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_replace_and_delete_are_skipped_by_search_until_compaction(random_codes, kind):
    codes, ids, quant = random_codes
    index = PinIndex.build(codes[:1000], ids[:1000], quant, "v1", config=IndexConfig(kind=kind))
    stored = dequantize(codes[:1000], quant)
    assert index.search(stored[3:4], 1)[1] == [["r3"]]
    index.put(codes[500:501], ["r3"])  # r3 now holds r500's vector
    assert index.delete(["r500", "r7", "unknown"]) == 2 and len(index) == 998
    _, found = index.search(stored[[3, 500, 7]], 10)
    assert found[1][0] == "r3" and "r3" not in found[0] and not any("r500" in f or "r7" in f for f in found)
    assert np.allclose(index.vector("r3"), stored[500], atol=1e-6)
    compact = index.compacted()
    assert len(compact) == 998 and compact.faiss_index.ntotal == 998 and not compact.dead
    before, after = index.search(stored[[3, 500, 7]], 10)[1], compact.search(stored[[3, 500, 7]], 10)[1]
    assert after[1][0] == "r3" and (after == before if kind != "hnsw" else after[0][:3] == before[0][:3])
    assert np.array_equal(compact.codes_of(["r3", "r9"]), index.codes_of(["r3", "r9"]))


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_save_load_round_trip(random_codes, tmp_path, kind):
    codes, ids, quant = random_codes
    index = PinIndex.build(codes[:800], ids[:800], quant, "v1", config=IndexConfig(kind=kind))
    index.save(tmp_path / "idx")
    loaded = PinIndex.load(tmp_path / "idx")
    assert loaded.meta == index.meta and loaded.pin_ids == index.pin_ids
    queries = unit_vectors(10, 64, seed=4)
    assert loaded.search(queries, 10)[1] == index.search(queries, 10)[1]
    if kind == "hnsw":
        assert loaded.faiss_index.hnsw.efSearch == index.meta.params["ef_search"]


def test_load_refuses_inconsistent_or_missing_files(random_codes, tmp_path):
    codes, ids, quant = random_codes
    index = PinIndex.build(codes[:50], ids[:50], quant, "v1", config=IndexConfig(kind="flat"))
    index.save(tmp_path / "idx")
    PinIndex.build(codes[:40], ids[:40], quant, "v1", config=IndexConfig(kind="flat")).save(tmp_path / "small")
    (tmp_path / "idx" / "ids.parquet").write_bytes((tmp_path / "small" / "ids.parquet").read_bytes())
    with pytest.raises(PinIndexError, match="inconsistent index"):
        PinIndex.load(tmp_path / "idx")
    with pytest.raises(PinIndexError, match="not a readable pinclip index"):
        PinIndex.load(tmp_path / "nothing")


def _embed(folder, n, version="fake-1"):
    fake = FakeEmbedder()
    fake.version = version
    pins = write_pins_parquet(synthetic_pins(folder, n), folder / "pins.parquet")
    embed_pins_table(fake, pins, folder / "emb", shard_size=8, progress=False)
    return folder / "emb"


def test_cli_build_add_and_refuse_another_model(tmp_path, capsys):
    first = _embed(tmp_path / "a", 20)
    assert main(["index", "build", "--embeddings", str(first), "--out", str(tmp_path / "idx")]) == 0
    assert len(PinIndex.load(tmp_path / "idx")) == 20
    image_index = tmp_path / "img_idx"
    assert main(["index", "build", "--embeddings", str(first), "--out", str(image_index), "--field", "image"]) == 0
    assert PinIndex.load(image_index).meta.field == "image"

    fresh = tmp_path / "b"
    pins = synthetic_pins(fresh, 3)
    for pin in pins:
        pin["pin_id"] = "fresh-" + pin["pin_id"]
    write_pins_parquet(pins, fresh / "pins.parquet")
    embed_pins_table(FakeEmbedder(), fresh / "pins.parquet", fresh / "emb", progress=False)
    assert main(["index", "add", "--index", str(tmp_path / "idx"), "--embeddings", str(fresh / "emb")]) == 0
    index = PinIndex.load(tmp_path / "idx")
    assert len(index) == 23 and "fresh-p001" in index
    from pinclip.serve.faiss_backend import FaissBackend

    store = FaissBackend.open(tmp_path / "idx")
    assert store.card("fresh-p001")["title"] == "green circle 1"  # titles from the new pins' table
    store.close()
    assert index.meta.sources == [str(first.resolve())]

    other = _embed(tmp_path / "c", 4, version="fake-2")
    capsys.readouterr()
    assert main(["index", "add", "--index", str(tmp_path / "idx"), "--embeddings", str(other)]) == 2
    assert "model fake-1, these are from model fake-2" in capsys.readouterr().err
    assert main(["index", "add", "--index", str(tmp_path / "idx"), "--embeddings", str(first)]) == 0
    assert "added 0 pins and replaced 20" in capsys.readouterr().err
    assert len(PinIndex.load(tmp_path / "idx")) == 23


def test_load_embeddings_leaves_out_missing_fields(tmp_path):
    folder = tmp_path / "a"
    pins = synthetic_pins(folder, 4)
    pins[1]["image"] = None
    write_pins_parquet(pins, folder / "pins.parquet")
    embed_pins_table(FakeEmbedder(), folder / "pins.parquet", folder / "emb", progress=False)
    images = load_embeddings(folder / "emb", "image")
    assert images.pin_ids == ["p000", "p002", "p003"] and images.missing == 1
    assert images.codes.shape == (3, 32) and images.codes.dtype == np.int8
