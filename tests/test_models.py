"""PinCLIP model: the backbone split, multi-granularity tokens, gradient flow, HF towers, Embedder."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pinclip.config import load_config
from pinclip.data.schema import TEXT_FIELDS, field_text
from pinclip.models.backbone import Backbone
from pinclip.models.pinclip import PinCLIP
from pinclip.models.text_states import compute_text_states, text_batch
from pinclip.models.vision import grid_to_tokens

TEXTS = [["red apple", "", "", "", "fruit, food"], ["", "a small cat", "", "meow", ""], ["dog", "", "", "", ""]]


def tiny_model(**overrides) -> PinCLIP:
    cfg = load_config(preset="tiny", overrides=[f"{k}={v}" for k, v in overrides.items()])
    return PinCLIP(cfg.model)


def tiny_batch(model: PinCLIP, has_image=(True, False, True)) -> dict[str, torch.Tensor]:
    states = compute_text_states(model.backbone, TEXTS, progress=False)
    batch = text_batch(states, np.arange(len(TEXTS)))
    g = torch.Generator().manual_seed(1)
    batch["vis"] = torch.randn(len(TEXTS), model.num_visual, model.vision.out_channels, generator=g)
    batch["has_image"] = torch.tensor(has_image)
    return batch


def test_grid_to_tokens_hand_computed():
    grid = torch.arange(16, dtype=torch.float32).view(1, 1, 4, 4)  # rows 0-3, 4-7, 8-11, 12-15
    tokens = grid_to_tokens(grid, regions=2, patches=False)  # (1, 5, 1)
    assert tokens.shape == (1, 5, 1)
    # global mean 7.5; quadrants: top-left mean of 0,1,4,5 = 2.5; top-right 4.5; bottom-left 10.5; bottom-right 12.5
    assert tokens.flatten().tolist() == [7.5, 2.5, 4.5, 10.5, 12.5]
    assert grid_to_tokens(grid, regions=2, patches=True).shape == (1, 21, 1)


def test_prefix_then_suffix_equals_whole_backbone():
    cfg = load_config(preset="tiny").model.backbone
    backbone = Backbone(cfg)
    ids, mask = backbone.tokenize(["a red apple on a table", "cat"])
    split = backbone.encode_from_entry(backbone.encode_prefix(ids, mask), mask)
    whole = backbone.model(input_ids=ids, attention_mask=mask.long()).last_hidden_state
    assert backbone.entry == 1
    assert torch.allclose(split[mask], whole[mask], atol=1e-5)


def test_outputs_normalized_with_field_mask():
    model = tiny_model()
    out = model(tiny_batch(model))
    assert out["image"].shape == (3, 32) and out["pin"].shape == (3, 32) and out["text"].shape == (3, 5, 32)
    assert torch.allclose(out["pin"].norm(dim=-1), torch.ones(3), atol=1e-5)
    expected = torch.tensor([[bool(t) for t in row] for row in TEXTS])
    assert torch.equal(out["text_mask"], expected)
    assert torch.all(out["text"][~expected] == 0)


def test_gradients_reach_only_trained_parts():
    model = tiny_model()
    out = model(tiny_batch(model))
    (out["image"].sum() + out["text"].sum() + out["pin"].sum()).backward()
    for name, p in model.named_parameters():
        frozen = name.startswith("vision.") or name.startswith("backbone.model.embeddings") \
            or name.startswith("backbone.model.encoder.layer.0.")
        if frozen:
            assert not p.requires_grad and p.grad is None, name
    trained = ["projector.1.weight", "head.weight", "field_embed", "granularity",
               "backbone.model.encoder.layer.1.output.dense.weight"]
    grads = dict(model.named_parameters())
    for name in trained:
        assert grads[name].grad is not None and grads[name].grad.abs().sum() > 0, name


def test_lora_backbone_starts_as_the_pretrained_layers_and_trains_only_its_adapters(tmp_path):
    """finetune=lora: at init (B = 0) the model computes exactly what the full-finetune model computes from the
    same weights; gradients reach the adapters of the trained layers and no base weight; a checkpoint holds the
    adapters and gives the trained model back."""
    from pinclip.train.checkpoint import load_model, save_checkpoint, weight_names

    torch.manual_seed(0)
    full = tiny_model()
    torch.manual_seed(0)
    lora = tiny_model(**{"model.backbone.finetune": "lora", "model.backbone.lora_rank": 4})
    lora.load_state_dict(full.state_dict(), strict=False)  # same base and head weights; adapters as they start
    batch = tiny_batch(full)
    with torch.no_grad():
        a, b = full(batch), lora(batch)
    assert torch.allclose(a["pin"], b["pin"], atol=1e-6) and torch.allclose(a["text"], b["text"], atol=1e-6)
    out = lora(batch)
    (out["image"].sum() + out["text"].sum() + out["pin"].sum()).backward()
    backbone = {n: p for n, p in lora.named_parameters() if n.startswith("backbone.")}
    adapters = [n for n, p in backbone.items() if p.requires_grad]
    assert adapters and all(".layer.1." in n and "lora_" in n for n in adapters)  # only the trained layer's
    assert any(backbone[n].grad is not None and backbone[n].grad.abs().sum() > 0 for n in adapters if "lora_B" in n)
    assert all(p.grad is None for n, p in backbone.items() if "lora_" not in n)
    with torch.no_grad():
        for n in adapters:
            backbone[n].add_(0.05)  # as if trained
    cfg = load_config(preset="tiny", overrides=["model.backbone.finetune=lora", "model.backbone.lora_rank=4"])
    save_checkpoint(tmp_path / "ck", lora, cfg, step=1)
    assert set(adapters) <= set(weight_names(lora))
    loaded, _, _ = load_model(tmp_path / "ck")
    with torch.no_grad():
        again, trained = loaded(batch), lora(batch)
    assert torch.allclose(again["pin"], trained["pin"], atol=1e-6)
    assert not torch.allclose(trained["pin"], a["pin"], atol=1e-4)  # the adapters did change the model
    with pytest.raises(ValueError, match="finetune"):
        tiny_model(**{"model.backbone.finetune": "adapters"})


def test_length_buckets_equal_the_padded_batch():
    model = tiny_model()
    batch = tiny_batch(model)
    states, mask, field_id = batch["field_states"], batch["field_mask"], batch["field_id"]
    assert torch.allclose(model.encode_text(states, mask, field_id, bucket=1),
                          model.encode_text(states, mask, field_id, bucket=1000), atol=1e-5)
    assert torch.allclose(model.encode_pin(batch, bucket=1), model.encode_pin(batch, bucket=1000), atol=1e-5)
    padded = torch.cat([states, torch.zeros(states.shape[0], 5, states.shape[2])], dim=1)  # extra padding
    padded_mask = torch.cat([mask, torch.zeros(mask.shape[0], 5, dtype=torch.bool)], dim=1)
    assert torch.allclose(model.encode_text(padded, padded_mask, field_id),
                          model.encode_text(states, mask, field_id), atol=1e-5)


def test_bf16_autocast_forward_and_backward():
    model = tiny_model()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(tiny_batch(model))
    assert out["pin"].dtype == torch.bfloat16
    out["pin"].float().sum().backward()
    assert model.head.weight.grad is not None


def test_pin_without_image_ignores_visual_tokens():
    model = tiny_model()
    batch = tiny_batch(model)
    first = model(batch, modes=("pin",))["pin"]
    batch["vis"][1] += 100.0  # pin 1 has no image: its visual tokens must not matter
    second = model(batch, modes=("pin",))["pin"]
    assert torch.allclose(first[1], second[1], atol=1e-6)
    assert torch.allclose(first[0], second[0], atol=1e-6)  # batch rows do not interact
    batch["vis"][0] = torch.randn_like(batch["vis"][0])  # (a constant shift would vanish in the LayerNorm)
    assert not torch.allclose(first[0], model(batch, modes=("pin",))["pin"][0])


@pytest.fixture
def hf_folders(tmp_path):
    from transformers import AutoTokenizer, Qwen2Config, Qwen2Model, SiglipVisionConfig, SiglipVisionModel

    from pinclip.models.backbone import minilm_folder

    qwen = tmp_path / "qwen2-tiny"
    torch.manual_seed(0)
    Qwen2Model(Qwen2Config(vocab_size=30522, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
               ).save_pretrained(qwen)
    AutoTokenizer.from_pretrained(minilm_folder()).save_pretrained(qwen)
    siglip = tmp_path / "siglip-tiny"
    SiglipVisionModel(SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=2, image_size=32, patch_size=8)).save_pretrained(siglip)
    return qwen, siglip


def test_qwen2_backbone_and_siglip_tower_plug_in_offline(hf_folders):
    qwen, siglip = hf_folders
    model = tiny_model(**{"model.backbone.name": str(qwen), "model.vision.name": str(siglip),
                          "model.backbone.pooling": "last", "model.backbone.train_layers": 1})
    assert model.vision.out_channels == 32 and model.num_visual == 5  # 4x4 patch grid: 1 + 2x2 regions
    assert not model.backbone.is_bert and model.backbone.entry == 0
    batch = tiny_batch(model)
    batch["pixels"] = torch.randn(3, 3, 32, 32)
    out = model(batch)
    out["pin"].sum().backward()
    layers = model.backbone.layers
    assert layers[1].mlp.up_proj.weight.grad is not None
    assert layers[0].mlp.up_proj.weight.grad is None  # below the trained top layer
    assert all(p.grad is None for p in model.vision.parameters())


def test_embedder_matches_training_path(tiny_checkpoint, catalog, tmp_path):
    """The Embedder on raw PNGs and raw texts gives what a training step computes for the same pins from its
    feature cache and text states (pinclip.train.trainer.local_batch, then the model's forward)."""
    import pyarrow.parquet as pq
    from PIL import Image

    from pinclip.models.embedder import Embedder
    from pinclip.train.checkpoint import load_model
    from pinclip.train.dataset import batch_at, load_dataset_dir, prepare_training
    from pinclip.train.trainer import batch_config, compute_features, local_batch

    model, cfg, meta = load_model(tiny_checkpoint)
    data = prepare_training(load_dataset_dir(catalog["pins"].parent), cfg.graph, seed=0, progress=False)
    feats = compute_features(model, data, str(tmp_path), rank=0, progress=False)
    batch, _ = local_batch(data, feats, 0, cfg, 0, 1, torch.device("cpu"))
    with torch.no_grad():
        trained = model(batch)  # (B, D) image and pin, (B, F, D) text of the training rows
    rows = batch_at(data, 0, batch_config(cfg)).rows
    table = pq.read_table(catalog["pins"]).to_pylist()
    pins = [{"image": Image.open(catalog["pins"].parent / table[r]["image"]),
             **{f: table[r][f] for f in TEXT_FIELDS}} for r in rows]
    emb = Embedder(model, meta)
    assert emb.version.startswith("pinclip-") and emb.dim == 32 and emb.quant is not None
    ours = emb.embed_pin_modes(pins)
    np.testing.assert_allclose(ours["image"], trained["image"].numpy(), atol=1e-5)
    np.testing.assert_allclose(ours["pin"], trained["pin"].numpy(), atol=1e-5)
    mask = trained["text_mask"].numpy()
    for f, field in enumerate(TEXT_FIELDS):
        present = np.flatnonzero(mask[:, f])
        if len(present):
            texts = [field_text(pins[i][field]) for i in present]
            np.testing.assert_allclose(emb.embed_texts(texts, field=field), trained["text"][present, f].numpy(),
                                       atol=1e-5, err_msg=field)
    assert mask[:, 0].all() and mask[:, 4].all() and not mask[:, 2].any()  # titles, annotations; no caption
    assert not np.allclose(ours["pin"], emb.embed_pins([{"image": p["image"]} for p in pins]), atol=1e-3)


def test_embed_pin_modes_equals_the_separate_calls(tiny_checkpoint, catalog):
    from PIL import Image

    from pinclip.models.embedder import Embedder

    emb = Embedder.from_checkpoint(tiny_checkpoint)
    img = Image.open(catalog["pins"].parent / "images" / "red-circle-0.png")
    pins = [{"image": img, "title": "red circle"}, {"image": None, "title": "blue square", "queries": ["blue"]}]
    both = emb.embed_pin_modes(pins)
    assert np.allclose(both["pin"], emb.embed_pins(pins), atol=1e-6)
    assert np.allclose(both["image"][:1], emb.embed_images([img]), atol=1e-6)
