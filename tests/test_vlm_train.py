"""Training a tiny VLM backbone: the vision cache, FSDP2 on two CPU ranks (gloo) against one process,
resuming the sharded run's Distributed Checkpoint at world size 1, gradient checkpointing, and the
errors a user meets (unsupported model type, missing flash-attn)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
from synthetic import COLORS, draw
from test_train import losses, train_two_ranks

from pinclip.cli import UserError
from pinclip.config import load_config
from pinclip.models.build import build_model

FAMILY = "qwen2_5_vl"  # dynamic resolution and M-RoPE: the most moving parts


def vlm_overrides(catalog, folder: Path, out: Path, steps: int = 4) -> list[str]:
    return [f"model.vlm.path={folder}", f"train.data_dir={catalog['pins'].parent}", f"train.out_dir={out}",
            f"train.cache_dir={out.parent / 'cache'}", f"train.steps={steps}", "train.checkpoint_every=2",
            "train.eval_every=100", "train.parallel=fsdp", "train.precision=fp32",  # exact rank comparisons
            "loss.board_weight=0"]  # the board-title term reads the embedded towers only


def test_fsdp_two_ranks_match_one_process_and_resume_at_world_size_one(catalog, tiny_vlm, tmp_path):
    from pinclip.train.checkpoint import load_model
    from pinclip.train.trainer import train

    folder = tiny_vlm(FAMILY)
    one = tmp_path / "one"
    train(load_config(preset="tiny", overrides=vlm_overrides(catalog, folder, one)), progress=False)
    shards = list((tmp_path / "cache" / "vlm").glob("*/shard-*.safetensors"))
    assert shards  # the frozen vision encoder's outputs were cached ...

    two = tmp_path / "two"
    train_two_ranks(vlm_overrides(catalog, folder, two), timeout=600)
    assert sorted(shards) == sorted((tmp_path / "cache" / "vlm").glob("*/shard-*.safetensors"))  # ... and reused
    single, double = losses(one), losses(two)
    assert sorted(single) == sorted(double) == [1, 2, 3, 4]
    for step in single:
        assert double[step] == pytest.approx(single[step], rel=1e-4, abs=1e-5)

    # the step-2 checkpoint was written by both ranks, each its half of every sharded weight
    meta = dcp.FileSystemReader(str(two / "last" / "dcp")).read_metadata().state_dict_metadata
    lora = next(k for k in meta if "lora_A" in k)
    assert len(meta[lora].chunks) == 2
    assert not any("base_layer" in k or "embed_tokens" in k for k in meta)  # frozen weights stay in the folder

    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(two / "last", resumed / "last")  # as if killed after step 2; now one process
    train(load_config(preset="tiny", overrides=vlm_overrides(catalog, folder, resumed)), progress=False)
    after = losses(resumed)
    assert sorted(after) == [3, 4]
    for step in (3, 4):
        assert after[step] == pytest.approx(double[step], rel=1e-4, abs=1e-5)

    model, _, meta_final = load_model(two / "final")  # the sharded run's final weights, gathered
    assert meta_final["quant"] and meta_final["vlm_version"] == model.backbone.version
    assert json.loads((two / "final" / "meta.json").read_text())["step"] == 4

    # merged for serving: the embed job and the Embedder interface read the export like any checkpoint
    from pinclip.cli import main
    from pinclip.models.embedder import Embedder

    assert main(["export", "--checkpoint", str(two / "final"), "--out", str(tmp_path / "export")]) == 0
    assert main(["embed", "--checkpoint", str(tmp_path / "export"), "--pins", str(catalog["pins"]),
                 "--out", str(tmp_path / "embed"), "--quiet", "--cache-dir", str(tmp_path / "cache")]) == 0
    manifest = json.loads((tmp_path / "embed" / "manifest.json").read_text())
    assert manifest["model_version"] == meta_final["version"] and manifest["pins"]["rows"] == 72
    emb = Embedder.from_checkpoint(tmp_path / "export")
    text, image = emb.embed_texts(["red circle"]), emb.embed_images([draw(COLORS["red"], "circle", 40)])
    assert text.shape == image.shape == (1, emb.dim) and abs(float((text @ image.T)[0, 0])) <= 1.0 + 1e-6


def test_cached_vision_features_give_the_same_embeddings(tiny_vlm, tmp_path):
    from pinclip.models.features import pixel_key
    from pinclip.models.vlm.cache import VisionCache

    model = build_model(load_config(preset="tiny", overrides=[f"model.vlm.path={tiny_vlm('qwen3_vl')}"]).model)
    imgs = [draw(COLORS["red"], "circle", 40), draw(COLORS["blue"], "square", 60)]
    texts = [["red circle", "", "", "", ""], ["", "blue", "", "", ""]]
    cache = VisionCache.for_model(model, tmp_path)
    with torch.no_grad():
        cache.put([pixel_key(i) for i in imgs], model.encode_image_features(imgs))
        hits = [VisionCache.for_model(model, tmp_path).get(pixel_key(i)) for i in imgs]
        assert all(len(h.deepstack) == 1 for h in hits)  # Qwen3-VL's deepstack features travel along
        fresh = model({"images": imgs, "texts": texts})
        cached = model({"images": imgs, "texts": texts, "image_features": hits})
    for key in ("image", "pin"):
        assert torch.allclose(fresh[key], cached[key], atol=1e-6)

    lora_vision = load_config(preset="tiny", overrides=[f"model.vlm.path={tiny_vlm('qwen3_vl')}",
                                                         "model.vlm.lora_vision=true"])
    assert VisionCache.for_model(build_model(lora_vision.model), tmp_path) is None  # a trained encoder: no cache


@pytest.mark.parametrize("family", ["qwen2_vl", "idefics3"])
def test_gradient_checkpointing_gives_the_same_gradients(family, tiny_vlm):
    grads = []
    for checkpointing in (False, True):
        cfg = load_config(preset="tiny", overrides=[f"model.vlm.path={tiny_vlm(family)}",
                                                    f"model.vlm.gradient_checkpointing={checkpointing}"])
        torch.manual_seed(0)
        model = build_model(cfg.model)
        out = model({"images": [draw(COLORS["red"], "circle", 40), None],
                     "texts": [["red circle", "", "", "", ""], ["", "", "blue", "", ""]]})
        (out["image"].sum() + out["pin"].sum() + out["text"].sum()).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and any("lora_B" in n for n in grads[0])
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], atol=1e-6), name


def test_attention_kernels_agree_and_flash_attention_is_checked(tiny_vlm):
    from transformers.utils import is_flash_attn_2_available

    folder = tiny_vlm("llava")
    outs = []
    for kernel in ("sdpa", "eager"):
        cfg = load_config(preset="tiny", overrides=[f"model.vlm.path={folder}", f"model.vlm.attn_implementation={kernel}"])
        model = build_model(cfg.model)
        assert model.backbone.hf.config._attn_implementation == kernel
        with torch.no_grad():
            outs.append(model({"images": [draw(COLORS["red"], "circle", 40)], "texts": [["red", "", "", "", ""]]}))
    assert torch.allclose(outs[0]["pin"], outs[1]["pin"], atol=1e-5)
    if not is_flash_attn_2_available():
        cfg = load_config(preset="tiny", overrides=[f"model.vlm.path={folder}",
                                                    "model.vlm.attn_implementation=flash_attention_2"])
        with pytest.raises(UserError, match="flash-attn"):
            build_model(cfg.model)


def test_unsupported_models_are_named(catalog, tmp_path):
    from transformers import BertConfig

    BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=1, intermediate_size=8).save_pretrained(tmp_path)
    cfg = load_config(preset="tiny", overrides=[f"model.vlm.path={tmp_path}"])
    with pytest.raises(UserError, match="'bert' is not a supported .*qwen2_5_vl.*idefics3.*smolvlm.*llava"):
        build_model(cfg.model)
    # from the command line: exit code 2 and one line, no traceback
    result = subprocess.run([sys.executable, "-m", "pinclip", "train", "--preset", "gpu", "--quiet",
                             f"model.vlm.path={tmp_path / 'nowhere'}", f"train.data_dir={catalog['pins'].parent}",
                             f"train.out_dir={tmp_path / 'out'}"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "not a Hugging Face model folder" in result.stderr


def test_settings_of_the_embedded_towers_are_refused_for_a_vlm():
    from pinclip.models.vlm.inputs import check_training_config

    check_training_config(load_config(preset="gpu"))  # the VLM preset itself is fine
    cfg = load_config(preset="gpu", overrides=["train.feature_noise=0.1", "loss.distill_weight=0.5"])
    with pytest.raises(UserError, match="train.feature_noise, loss.distill_weight act on the embedded towers"):
        check_training_config(cfg)

