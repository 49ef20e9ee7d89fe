"""pinclip.eval.harness on the tiny checkpoint: result layout, a ranking recomputed from the raw tables through
the Embedder (another code path), the frozen and bm25 baselines, the late-fusion (lit) pin, and clean errors."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from ranking import brute_force
from synthetic import COLORS, SHAPES

from pinclip.cli import UserError
from pinclip.eval.harness import SUMMARY_METRICS, evaluate_checkpoint
from pinclip.train.dataset import load_dataset

COLD = [("red", "square"), ("blue", "circle"), ("green", "cross"), ("orange", "circle")]
VAL = [("yellow", "triangle"), ("purple", "circle")]
TEST_BOARDS, VAL_BOARDS = ["shape-circle", "color-blue"], ["color-yellow"]


def copies(pairs) -> list[str]:
    return [f"{c}-{s}-{k}" for c, s in pairs for k in range(3)]


def eval_splits() -> dict:
    """Whole color-shape triples held out (their pins share a title: one duplicate group each)."""
    return {"seed": 0, "cold_start_pins": copies(COLD), "val_pins": copies(VAL),
            "heldout_boards": sorted(TEST_BOARDS + VAL_BOARDS), "val_boards": VAL_BOARDS,
            "duplicate_groups": [copies([(c, s)]) for c in COLORS for s in SHAPES]}


@pytest.fixture(scope="module")
def dataset(catalog):
    return load_dataset(catalog["pins"], catalog["boards"], None)


@pytest.fixture(scope="module")
def result(tiny_checkpoint, dataset) -> dict:
    return evaluate_checkpoint(tiny_checkpoint, dataset, splits=eval_splits(), progress=False, ann_min=10)


def test_result_layout(result):
    assert set(result) == {"metrics", "per_query", "dims", "quantization", "notes", "meta"}
    assert list(result["metrics"]) == ["pintext_i2t", "pintext_t2i", "related", "search"]
    assert set(result["metrics"]["related"]) == {"warm", "cold"}
    assert set(result["metrics"]["related"]["warm"]) == {"full", "title", "image"}
    assert set(result["metrics"]["pintext_i2t"]["cold"]) == {"full"}
    for task, by_split in result["metrics"].items():
        for split, by_regime in by_split.items():
            for regime, cell in by_regime.items():
                if task != "pintext_i2t":  # the whole catalog (i2t searches distinct texts)
                    assert cell["corpus"] == 72
                per_query = result["per_query"][task][split][regime]
                assert len(per_query["query_ids"]) == cell["queries"] > 0
                for name in SUMMARY_METRICS:
                    assert len(per_query[name]) == cell["queries"]
                    assert cell[name] == pytest.approx(float(np.mean(per_query[name])))
                    if not name.startswith("ceiling"):
                        lo, hi = cell[f"{name}_ci"]
                        assert lo <= cell[name] + 1e-12 and cell[name] <= hi + 1e-12
    assert result["metrics"]["pintext_i2t"]["warm"]["full"]["corpus"] < 72 * 5  # distinct texts, not pins x fields
    assert set(result["dims"]) == {32, 16} and set(result["dims"][16]) == set(result["metrics"])
    quant = result["quantization"]["related"]["warm"]
    assert set(quant) == {"fp32", "int8_global", "int8_per_dim", "ann", "ann_index"}
    assert quant["ann_index"].startswith("ivf")  # 72 pins >= ann_min
    meta = result["meta"]
    assert meta["kind"] == "pinclip" and meta["partition"] == "test" and meta["splits"] == ["warm", "cold"]
    assert meta["dataset"]["cold_start_pins"] == 12 and meta["dataset"]["val_boards"] == 1
    assert meta["tasks"]["search"]["warm"]["image"]["corpus"] == 72
    assert meta["training"]["seconds"] > 0 and meta["training"]["flops"] > 0  # recorded by the trainer


def test_search_queries_are_the_test_boards_only(result):
    assert sorted(result["per_query"]["search"]["warm"]["full"]["query_ids"]) == sorted(TEST_BOARDS)


def test_each_query_keeps_its_bootstrap_cluster(result):
    """Search: the board; Related Pins: a test board holding the query; PinText: the query itself."""
    search = result["per_query"]["search"]["warm"]["full"]
    assert search["clusters"] == search["query_ids"]
    related = result["per_query"]["related"]["cold"]["full"]
    assert len(related["clusters"]) == len(related["query_ids"]) and set(related["clusters"]) <= set(TEST_BOARDS)
    i2t = result["per_query"]["pintext_i2t"]["cold"]["full"]
    assert i2t["clusters"] == i2t["query_ids"]


@pytest.fixture(scope="module")
def raw(catalog):
    """The raw tables, read with pyarrow and PIL only."""
    pins = pq.read_table(catalog["pins"]).to_pylist()
    edges = pq.read_table(catalog["boards"]).to_pylist()
    images = [Image.open(catalog["pins"].parent / p["image"]).convert("RGB") for p in pins]
    return pins, edges, images


def check_against(result, task, split, regime, reference, ids):
    ours = result["per_query"][task][split][regime]
    assert ours["query_ids"] == ids
    for name in ("recall@10", "ndcg@10", "mrr"):
        np.testing.assert_allclose(ours[name], reference[name], atol=1e-9, err_msg=name)


def related_by_hand(raw) -> tuple[list[int], list[set[int]], list[set[int]]]:
    """Related Pins (warm split) from the boards table: queries are warm pins of a test board; relevant are
    their board mates minus the query's color-shape triple, which is excluded from the ranking."""
    pins, edges, _ = raw
    ids = [p["pin_id"] for p in pins]
    members = {b: {ids.index(e["pin_id"]) for e in edges if e["board_id"] == b} for b in TEST_BOARDS}
    held = set(copies(COLD)) | set(copies(VAL))
    group = {i: {j for j, other in enumerate(ids) if other.rsplit("-", 1)[0] == pin.rsplit("-", 1)[0]}
             for i, pin in enumerate(ids)}
    queries = [i for i, pin in enumerate(ids) if pin not in held and any(i in m for m in members.values())]
    relevant = [set().union(*(m for m in members.values() if i in m)) - group[i] for i in queries]
    return queries, relevant, [group[i] for i in queries]


def test_related_pins_in_the_image_regime_recomputed_from_the_raw_tables(result, raw, tiny_checkpoint):
    """Image-only pins embedded by the Embedder from the PNGs; queries, relevant and excluded pins from
    the boards table: warm pins of a test board; mates minus the query's color-shape triple."""
    from pinclip.models.embedder import Embedder

    pins, _, images = raw
    embedder = Embedder.from_checkpoint(tiny_checkpoint)
    vectors = embedder.embed_pins([{"image": img} for img in images])  # (72, D), no text at all
    queries, relevant, exclude = related_by_hand(raw)
    reference = brute_force(vectors[queries], vectors, relevant, exclude)
    check_against(result, "related", "warm", "image", reference, [pins[i]["pin_id"] for i in queries])
    held = set(copies(COLD)) | set(copies(VAL))  # seen@10: the share of the top 10 that are training pins
    seen = [np.mean([pins[j]["pin_id"] not in held for j in top]) for top in reference["top"]]
    np.testing.assert_allclose(result["per_query"]["related"]["warm"]["image"]["seen@10"], seen, atol=1e-12)
    assert 0 < np.mean(seen) < 1


def test_matryoshka_and_int8_entries_recomputed_from_the_raw_tables(result, raw, tiny_checkpoint):
    """Related Pins (full regime) at the 16-d prefix, and from int8 codes under the checkpoint's global
    scale and zero-point, ranked by brute force over pins embedded by the Embedder."""
    from pinclip.data.schema import TEXT_FIELDS
    from pinclip.models.embedder import Embedder
    from pinclip.quant import dequantize, quantize

    pins, _, images = raw
    embedder = Embedder.from_checkpoint(tiny_checkpoint)
    vectors = embedder.embed_pins([{"image": img, **{f: p[f] for f in TEXT_FIELDS}} for p, img in zip(pins, images)])
    queries, relevant, exclude = related_by_hand(raw)

    def two(v: np.ndarray) -> dict[str, float]:
        ref = brute_force(v[queries], v, relevant, exclude)
        return {"recall@10": float(np.mean(ref["recall@10"])), "ndcg@10": float(np.mean(ref["ndcg@10"]))}

    full, short = two(vectors), two(unit(vectors[:, :16]))
    stored = two(dequantize(quantize(vectors, embedder.quant), embedder.quant))
    quant = result["quantization"]["related"]["warm"]
    for name in ("recall@10", "ndcg@10"):
        assert result["metrics"]["related"]["warm"]["full"][name] == pytest.approx(full[name], abs=1e-9)
        assert result["dims"][32]["related"]["warm"][name] == pytest.approx(full[name], abs=1e-9)
        assert result["dims"][16]["related"]["warm"][name] == pytest.approx(short[name], abs=1e-9)
        assert quant["fp32"][name] == pytest.approx(full[name], abs=1e-9)
        assert quant["int8_global"][name] == pytest.approx(stored[name], abs=1e-9)
    assert short != full  # the prefix ranks differently: the entries are not copies of one another


def test_search_in_the_full_regime_recomputed_from_the_raw_tables(result, raw, tiny_checkpoint):
    """Board titles embedded as queries; pins embedded with every text field; a board's cold pins excluded."""
    from pinclip.data.schema import TEXT_FIELDS
    from pinclip.models.embedder import Embedder

    pins, edges, images = raw
    ids = [p["pin_id"] for p in pins]
    embedder = Embedder.from_checkpoint(tiny_checkpoint)
    vectors = embedder.embed_pins([{"image": img, **{f: p[f] for f in TEXT_FIELDS}} for p, img in zip(pins, images)])
    boards = sorted(TEST_BOARDS)
    titles = [next(e["board_title"] for e in edges if e["board_id"] == b) for b in boards]
    members = [{ids.index(e["pin_id"]) for e in edges if e["board_id"] == b} for b in boards]
    cold, val = set(copies(COLD)), set(copies(VAL))
    warm = [{i for i in m if ids[i] not in cold | val} for m in members]
    reference = brute_force(embedder.embed_texts(titles, field="queries"), vectors, warm,
                            [m - w for m, w in zip(members, warm)])
    check_against(result, "search", "warm", "full", reference, boards)
    reference = brute_force(embedder.embed_texts(titles, field="queries"), vectors,
                            [{i for i in m if ids[i] in cold} for m in members],
                            [{i for i in m if ids[i] not in cold} for m in members])
    check_against(result, "search", "cold", "full", reference, boards)


def test_validation_partition_judges_on_validation_boards_and_pins(tiny_checkpoint, dataset):
    val = evaluate_checkpoint(tiny_checkpoint, dataset, partition="val", splits=eval_splits(), tasks=["search"],
                              quantization=False, progress=False)
    assert val["meta"]["partition"] == "val"
    assert val["per_query"]["search"]["warm"]["full"]["query_ids"] == VAL_BOARDS
    assert val["meta"]["tasks"]["search"]["cold"]["full"]["queries"] == 1  # yellow-triangle copies are val pins


@pytest.fixture(scope="module")
def baselines(tiny_checkpoint, dataset, tmp_path_factory) -> dict:
    import yaml

    from pinclip.baselines.bm25 import create_bm25
    from pinclip.baselines.frozen import create_frozen
    from pinclip.config import config_from_dict

    root = tmp_path_factory.mktemp("baselines")
    cfg = config_from_dict(yaml.safe_load((tiny_checkpoint / "config.yaml").read_text()))
    folders = {"frozen": create_frozen(cfg, root / "frozen"), "bm25": create_bm25(root / "bm25")}
    return {name: evaluate_checkpoint(folder, dataset, splits=eval_splits(), progress=False, ann_min=10)
            for name, folder in folders.items()}


def test_frozen_baseline(baselines):
    from pinclip.baselines.frozen import NO_ALIGNMENT, NO_TEXT

    frozen = baselines["frozen"]
    assert frozen["meta"]["kind"] == "frozen" and frozen["dims"] == {}
    assert frozen["meta"]["training"] == {"seconds": None, "flops": None}  # untrained
    assert frozen["metrics"]["pintext_i2t"]["warm"]["full"] is None
    assert frozen["metrics"]["pintext_t2i"]["cold"]["full"] is None
    assert frozen["notes"]["pintext_i2t"] == frozen["notes"]["pintext_t2i"] == NO_ALIGNMENT
    assert frozen["metrics"]["search"]["warm"]["image"] is None and frozen["notes"]["search"] == NO_TEXT
    assert frozen["metrics"]["search"]["warm"]["full"]["queries"] == 2
    assert frozen["metrics"]["related"]["warm"]["image"]["queries"] > 0  # image-only pins: the image half
    assert "pintext_i2t" not in frozen["per_query"] and "image" not in frozen["per_query"]["search"]["warm"]


def test_bm25_baseline(baselines, result):
    from pinclip.baselines.bm25 import NO_IMAGE

    bm25 = baselines["bm25"]
    assert bm25["meta"]["kind"] == "bm25" and bm25["quantization"] == {} and bm25["dims"] == {}
    for task in ("pintext_i2t", "pintext_t2i"):
        assert bm25["metrics"][task]["warm"]["full"] is None and bm25["notes"][task] == NO_IMAGE
    for task in ("related", "search"):
        assert bm25["metrics"][task]["warm"]["image"] is None and bm25["metrics"][task]["cold"]["image"] is None
        for regime in ("full", "title"):
            cell = bm25["metrics"][task]["warm"][regime]
            assert cell["queries"] == result["metrics"][task]["warm"][regime]["queries"]
    # "circles" is stemmed to the word of every circle pin's title: the warm circles come first
    assert bm25["per_query"]["search"]["warm"]["title"]["query_ids"] == ["color-blue", "shape-circle"]
    assert bm25["per_query"]["search"]["warm"]["title"]["recall@10"][1] == 1.0


@pytest.fixture(scope="module")
def lit_checkpoint(catalog, tmp_path_factory):
    """A tiny late-fusion model (the lit recipe), trained for 2 steps."""
    from pinclip.config import load_config
    from pinclip.train.trainer import train

    out = tmp_path_factory.mktemp("tiny-lit")
    cfg = load_config(preset="tiny", overrides=[
        f"train.data_dir={catalog['pins'].parent}", f"train.out_dir={out}", "train.steps=2",
        "model.pin_mode=late", "loss.pin_text_weight=0.0", "loss.neighbor_weight=0.0"])
    return train(cfg, progress=False)


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_lit_pin_is_the_unit_sum_of_unit_image_and_unit_mean_text(lit_checkpoint, dataset, raw):
    """Per regime, from image and per-field text embeddings computed by the Embedder."""
    from pinclip.data.schema import TEXT_FIELDS, field_text
    from pinclip.eval.encoders import load_encoder
    from pinclip.eval.tasks import EvalData, build_eval_tasks
    from pinclip.models.embedder import Embedder

    pins, _, images = raw
    embedder = Embedder.from_checkpoint(lit_checkpoint)
    image = unit(embedder.embed_images(images))  # (P, D)
    texts = {f: embedder.embed_texts([field_text(p[f]) or " " for p in pins], field=f) for f in TEXT_FIELDS}
    kept = {"full": TEXT_FIELDS, "title": ("title",), "image": ()}
    encoder = load_encoder(lit_checkpoint)
    encoder.prepare(dataset.pins, None, progress=False)
    specs = build_eval_tasks(EvalData.from_dataset(dataset, splits=eval_splits()), tasks=("related",))
    for regime, fields in kept.items():
        spec = specs["related"]["warm"][regime]
        expected = []
        for i in spec.corpus_pins.tolist():
            present = [unit(texts[f][i]) for f in fields if field_text(pins[i][f])]
            text = unit(np.mean(present, axis=0)) if present else 0.0
            expected.append(unit(image[i] + text))
        np.testing.assert_allclose(encoder.vectors(spec).corpus, np.array(expected), atol=1e-5, err_msg=regime)


def test_errors_are_user_errors(tiny_checkpoint, dataset, tmp_path):
    with pytest.raises(UserError, match="not a PinCLIP checkpoint or baseline"):
        evaluate_checkpoint(tmp_path, dataset, progress=False)
    (tmp_path / "meta.json").write_text("{broken")
    with pytest.raises(UserError, match="meta.json: unreadable"):
        evaluate_checkpoint(tmp_path, dataset, progress=False)
    with pytest.raises(UserError, match=r"dims \[7\] are not Matryoshka dims of this model"):
        evaluate_checkpoint(tiny_checkpoint, dataset, splits=eval_splits(), dims=[7], progress=False)
    nothing = {"seed": 0, "cold_start_pins": [], "val_pins": [], "heldout_boards": []}
    with pytest.raises(UserError, match="no evaluation task has a query"):  # no held-out board: no ground truth
        evaluate_checkpoint(tiny_checkpoint, dataset, splits=nothing, tasks=["related", "search"], progress=False)
    bad = {**eval_splits(), "cold_start_pins": "red-circle-0"}
    with pytest.raises(UserError, match="cannot build evaluation tasks"):
        evaluate_checkpoint(tiny_checkpoint, dataset, splits=bad, progress=False)



def test_seen_at_k_counts_training_pins_among_the_returned_ones():
    from pinclip.eval.harness import seen_at_k

    ids = np.array([[0, 1, 2, -1], [3, 3, 3, 3]])
    trained = np.array([True, False, True, True])
    np.testing.assert_allclose(seen_at_k(ids, trained, k=4), [2 / 3, 1.0])
    np.testing.assert_allclose(seen_at_k(ids, trained, k=1), [1.0, 1.0])
