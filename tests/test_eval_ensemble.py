"""The tower-mix ensemble: PinCLIP concatenated with its untrained towers equals its formula, and its
ends are the two models it mixes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import yaml
from test_eval_harness import eval_splits

from pinclip.baselines.frozen import FrozenEncoder, create_frozen
from pinclip.config import config_from_dict
from pinclip.eval.encoders import ModelEncoder, unit
from pinclip.eval.ensemble import EnsembleEncoder, calibrate_mixed
from pinclip.eval.harness import evaluate_checkpoint
from pinclip.eval.tasks import EvalData, build_eval_tasks
from pinclip.models.tower_mix import create_mixed, tower_mix
from pinclip.train.dataset import load_dataset


@pytest.fixture(scope="module")
def setup(catalog, tiny_checkpoint, tmp_path_factory):
    root = tmp_path_factory.mktemp("ensemble")
    cfg = config_from_dict(yaml.safe_load((tiny_checkpoint / "config.yaml").read_text()))
    frozen = create_frozen(cfg, root / "frozen")
    dataset = load_dataset(catalog["pins"], catalog["boards"], None)
    specs = build_eval_tasks(EvalData.from_dataset(dataset, splits=eval_splits()), "test")
    return {"root": root, "frozen": frozen, "dataset": dataset, "specs": specs, "cache": tiny_checkpoint.parent.parent / "cache"}


def prepared(setup, checkpoint, folder):
    """The mix of `folder`, the checkpoint alone and its frozen towers, each prepared over the test catalog."""
    encoders = EnsembleEncoder(folder), ModelEncoder(checkpoint), FrozenEncoder(setup["frozen"])
    for enc in encoders:
        enc.prepare(setup["dataset"].pins, None, progress=False)
    return encoders


def test_tower_mix_is_the_weighted_concatenation():
    a, b = unit(np.array([[3.0, 4.0]])), unit(np.array([[1.0, 0.0, 1.0]]))
    mixed = tower_mix(a, b, 0.36)
    assert mixed == pytest.approx(np.array([[0.8 * 0.6, 0.8 * 0.8, 0.6 / math.sqrt(2), 0.0, 0.6 / math.sqrt(2)]]))
    assert np.linalg.norm(mixed) == pytest.approx(1.0)
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        tower_mix(a, b, 1.5)


def test_ensemble_vectors_equal_the_formula(setup, tiny_checkpoint):
    ens, model, towers = prepared(setup, tiny_checkpoint, create_mixed(tiny_checkpoint, 0.3, setup["root"] / "w30"))
    related = setup["specs"]["related"]["warm"]["title"]
    v = ens.vectors(related)
    ours = model.vectors(related)
    frozen = towers.vectors(related)  # the frozen baseline's own pin: unit([unit image; unit text half])
    assert np.allclose(v.queries, np.concatenate([math.sqrt(0.7) * ours.queries, math.sqrt(0.3) * frozen.queries], 1),
                       atol=1e-6)
    assert np.allclose(v.corpus @ v.queries.T, 0.7 * ours.corpus @ ours.queries.T + 0.3 * frozen.corpus @ frozen.queries.T,
                       atol=1e-5)
    search = setup["specs"]["search"]["warm"]["full"]
    s, s_ours, s_frozen = ens.vectors(search), model.vectors(search), towers.vectors(search)
    # the towers' text query against a pin's [image; text half] scores its text half, scaled by the pin's norm
    pins = unit(np.concatenate([towers.image, towers.text_half("full")], axis=1))[search.corpus_pins]
    w = pins.shape[1] - s_frozen.corpus.shape[1]
    expected = 0.7 * s_ours.queries @ s_ours.corpus.T + 0.3 * s_frozen.queries @ pins[:, w:].T
    assert np.allclose(s.queries @ s.corpus.T, expected, atol=1e-5)


def test_pintext_ranks_as_pinclip_and_the_ends_are_the_two_models(setup, tiny_checkpoint):
    ends = {w: evaluate_checkpoint(create_mixed(tiny_checkpoint, w, setup["root"] / f"e{w}"),
                                   setup["dataset"], splits=eval_splits(), progress=False, quantization=False)
            for w in (0.0, 0.3, 1.0)}
    alone = evaluate_checkpoint(tiny_checkpoint, setup["dataset"], splits=eval_splits(), progress=False,
                                quantization=False)
    frozen = evaluate_checkpoint(setup["frozen"], setup["dataset"], splits=eval_splits(), progress=False,
                                 quantization=False)
    for split in ("warm", "cold"):
        for regime in ("full", "title", "image"):
            assert ends[0.0]["metrics"]["related"][split][regime]["ndcg@10"] == pytest.approx(
                alone["metrics"]["related"][split][regime]["ndcg@10"])
            assert ends[1.0]["metrics"]["related"][split][regime]["ndcg@10"] == pytest.approx(
                frozen["metrics"]["related"][split][regime]["ndcg@10"])
        for task in ("pintext_i2t", "pintext_t2i"):  # the towers add 0 across modalities (w < 1)
            assert ends[0.3]["metrics"][task][split]["full"]["ndcg@10"] == pytest.approx(
                alone["metrics"][task][split]["full"]["ndcg@10"])


def test_the_served_mix_equals_the_evaluated_mix_and_carries_its_int8_params(setup, tiny_checkpoint, catalog):
    """Raw PNGs and texts through Embedder.from_checkpoint(mix folder) give the harness's vectors."""
    import pyarrow.parquet as pq
    from PIL import Image

    from pinclip.data.schema import TEXT_FIELDS
    from pinclip.models.embedder import Embedder
    from pinclip.models.tower_mix import MixedEmbedder
    from pinclip.quant import GlobalAffine

    folder = create_mixed(tiny_checkpoint, 0.4, setup["root"] / "served")
    quant = calibrate_mixed(folder, setup["dataset"])
    assert GlobalAffine.from_dict(quant).scale > 0
    emb = Embedder.from_checkpoint(folder)
    assert isinstance(emb, MixedEmbedder) and emb.quant is not None and emb.dims == [emb.dim]
    ens = EnsembleEncoder(folder)
    ens.prepare(setup["dataset"].pins, None, progress=False)
    rows = pq.read_table(catalog["pins"]).to_pylist()[:6]
    pins = [{**{f: r.get(f) for f in TEXT_FIELDS}, "image": Image.open(catalog["pins"].parent / r["image"])}
            for r in rows]
    served = emb.embed_pin_modes(pins, ("image", "pin"))
    related = setup["specs"]["related"]["warm"]["full"]
    ids = list(setup["dataset"].pins.pin_ids)
    evaluated = ens.vectors(related)  # corpus = every pin of the catalog in catalog order
    where = [list(related.corpus_pins).index(ids.index(r["pin_id"])) for r in rows]
    assert served["pin"].shape == (6, emb.dim)
    assert np.allclose(served["pin"], evaluated.corpus[where], atol=2e-3)
    texts = [r["title"] for r in rows]
    towers_only = emb.embed_texts(texts, field="title")[:, -ens.towers.fields_text.shape[2]:]
    assert np.allclose(towers_only, math.sqrt(0.4) * unit(ens.towers.fields_text[[ids.index(r["pin_id"]) for r in rows], 0]),
                       atol=2e-3)


def test_tower_reduction_projects_each_block_and_keeps_zero_rows_zero(tmp_path):
    """Centred (principal components) and as they are (the default): unit rows out, zero rows stay zero."""
    from pinclip.models.tower_mix import TowerReduction

    rng = np.random.default_rng(0)
    image, text = unit(rng.normal(size=(50, 8))), unit(rng.normal(size=(40, 6)))
    red = TowerReduction.fit(image, text, (3, 2), center=True)
    assert red.dims == (3, 2)
    assert np.allclose(red.image_basis.T @ red.image_basis, np.eye(3), atol=1e-5)  # orthonormal directions
    x = np.concatenate([image[:4], np.zeros((1, 8))])
    y = red.image(x)
    assert np.allclose(y[:4], unit((image[:4] - image.mean(0)) @ red.image_basis), atol=1e-5)
    assert np.allclose(np.linalg.norm(y[:4], axis=1), 1.0) and not y[4].any()  # no image stays no image
    red.save(tmp_path / "r.npz")
    again = TowerReduction.load(tmp_path / "r.npz")
    assert np.array_equal(again.text(text[:3]), red.text(text[:3]))
    with pytest.raises(ValueError, match="cannot keep 9 singular directions"):
        TowerReduction.fit(image, text, (9, 2))
    assert red.tag == "3x2c"
    whole = TowerReduction.fit(image, text, (8, 6))  # every direction, not centred (the default): a rotation
    assert whole.tag == "8x6"
    assert np.allclose(whole.image(image) @ whole.image(image).T, image @ image.T, atol=1e-5)


def test_reduced_mix_vectors_equal_the_formula_and_the_served_embedder_agrees(setup, tiny_checkpoint, catalog):
    """A mix whose towers' half is reduced: evaluated vectors are the weighted concatenation with each tower block
    projected; the served embedder gives the same pins and texts at 256 + IMAGE + TEXT dimensions."""
    import pyarrow.parquet as pq
    from PIL import Image

    from pinclip.data.schema import TEXT_FIELDS
    from pinclip.eval.ensemble import fit_towers_reduction
    from pinclip.models.embedder import Embedder

    red = fit_towers_reduction(tiny_checkpoint, setup["dataset"], (3, 4))
    folder = create_mixed(tiny_checkpoint, 0.5, setup["root"] / "reduced", reduction=red)
    ens, model, towers = prepared(setup, tiny_checkpoint, folder)
    related = setup["specs"]["related"]["warm"]["full"]
    tower_pins = unit(np.concatenate([red.image(towers.image), red.text(towers.text_half("full"))], axis=1))
    v, ours = ens.vectors(related), model.vectors(related)
    assert v.queries.shape[1] == ours.queries.shape[1] + 3 + 4
    assert np.allclose(v.corpus, np.concatenate([math.sqrt(0.5) * ours.corpus,
                                                 math.sqrt(0.5) * tower_pins[related.corpus_pins]], 1), atol=1e-5)
    emb = Embedder.from_checkpoint(folder)
    assert emb.dim == v.corpus.shape[1] and json_meta(folder)["towers_dims"] == [3, 4]
    rows = pq.read_table(catalog["pins"]).to_pylist()[:5]
    pins = [{**{f: r.get(f) for f in TEXT_FIELDS}, "image": Image.open(catalog["pins"].parent / r["image"])}
            for r in rows]
    ids = list(setup["dataset"].pins.pin_ids)
    where = [list(related.corpus_pins).index(ids.index(r["pin_id"])) for r in rows]
    assert np.allclose(emb.embed_pins(pins), v.corpus[where], atol=2e-3)
    titles = emb.embed_texts([r["title"] for r in rows], field="title")[:, -4:]
    expected = red.text(unit(towers.fields_text[[ids.index(r["pin_id"]) for r in rows], 0]))
    assert np.allclose(titles, math.sqrt(0.5) * expected, atol=2e-3)


def json_meta(folder):
    import json

    return json.loads((folder / "meta.json").read_text())
