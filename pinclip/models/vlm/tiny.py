"""Tiny random-weight vision-language models, written as Hugging Face folders (tests, CPU smoke runs).

    write_tiny_vlm("qwen2_5_vl", "runs/tiny-qwen")   # config.json, model.safetensors, processor files

Each folder holds what a real checkpoint holds (model weights, config, image processor, tokenizer,
processor config), so the code that loads a user's Qwen2.5-VL or SmolVLM loads these the same way.
The weights are random: a tiny model exercises code paths, never quality. The tokenizer is MiniLM's
word-piece vocabulary with the family's special tokens added; `width`, `layers` and `heads` size
the language model (`scripts/gpu_check.sh --random` builds a ~1B one for throughput figures).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

TINY_FAMILIES: tuple[str, ...] = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "idefics3", "smolvlm", "llava")
QWEN_TOKENS = ["<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>"]
QWEN_CHAT = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['content'] is string %}{{ m['content'] }}"
             "{% else %}{% for c in m['content'] %}{% if c['type'] == 'image' %}<|vision_start|><|image_pad|>"
             "<|vision_end|>{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
             "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def _tokenizer(extra: list[str]):
    from transformers import AutoTokenizer

    from pinclip.models.backbone import minilm_folder

    tok = AutoTokenizer.from_pretrained(minilm_folder())
    tok.add_special_tokens({"additional_special_tokens": extra})
    tok.init_kwargs.pop("max_length", None)  # MiniLM truncates at 128 tokens; a VLM prompt must not be cut
    tok.backend_tokenizer.no_truncation()
    return tok


def _text(tok, width: int, layers: int, heads: int, **extra) -> dict:
    return {"vocab_size": len(tok), "hidden_size": width, "intermediate_size": 2 * width, "num_hidden_layers": layers,
            "num_attention_heads": heads, "num_key_value_heads": max(1, heads // 2), "max_position_embeddings": 4096,
            "pad_token_id": tok.pad_token_id, "bos_token_id": tok.cls_token_id, "eos_token_id": tok.sep_token_id,
            **extra}


def _qwen(family: str, width: int, layers: int, heads: int):
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen3VLConfig,
        Qwen3VLForConditionalGeneration,
    )
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    tok = _tokenizer(QWEN_TOKENS)
    ids = {name: tok.convert_tokens_to_ids(t) for name, t in zip(
        ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id"), QWEN_TOKENS)}
    half = width // heads // 2  # rotary frequencies per head, split over (t, h, w)
    section = [half - 2 * (half // 3), half // 3, half // 3]
    patch = 16 if family == "qwen3_vl" else 14
    vision = {"depth": 2, "hidden_size": width, "num_heads": heads, "patch_size": patch, "spatial_merge_size": 2,
              "temporal_patch_size": 2}
    if family == "qwen2_vl":
        vision.update(embed_dim=width, mlp_ratio=2)
        cls, config_cls = Qwen2VLForConditionalGeneration, Qwen2VLConfig
    elif family == "qwen2_5_vl":
        vision.update(intermediate_size=2 * width, out_hidden_size=width, fullatt_block_indexes=[1], window_size=56)
        cls, config_cls = Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLConfig
    else:
        vision.update(intermediate_size=2 * width, out_hidden_size=width, deepstack_visual_indexes=[0],
                      num_position_embeddings=64)
        cls, config_cls = Qwen3VLForConditionalGeneration, Qwen3VLConfig
    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": section}
    if family == "qwen3_vl":
        rope["mrope_interleaved"] = True
    text = _text(tok, width, layers, heads, rope_parameters=rope, head_dim=width // heads)
    config = config_cls(text_config=text, vision_config=vision, **ids)
    side = patch * 2  # one merged token
    image_processor = Qwen2VLImageProcessorPil(patch_size=patch, merge_size=2, temporal_patch_size=2,
                                               min_pixels=side * side * 4, max_pixels=side * side * 16)
    processor = {"processor_class": {"qwen2_vl": "Qwen2VLProcessor", "qwen2_5_vl": "Qwen2_5_VLProcessor",
                                     "qwen3_vl": "Qwen3VLProcessor"}[family]}
    return cls(config), tok, image_processor, processor, QWEN_CHAT


def _idefics3(family: str, width: int, layers: int, heads: int):
    from transformers import (
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        SmolVLMConfig,
        SmolVLMForConditionalGeneration,
    )
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil
    from transformers.models.smolvlm.image_processing_pil_smolvlm import SmolVLMImageProcessorPil

    rows = [f"<row_{i + 1}_col_{j + 1}>" for i in range(6) for j in range(6)]
    tok = _tokenizer(["<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>", *rows])
    vision = {"hidden_size": width, "intermediate_size": 2 * width, "num_hidden_layers": 1, "num_attention_heads": heads,
              "image_size": 32, "patch_size": 8}
    text = _text(tok, width, layers, heads, model_type="llama", head_dim=width // heads)
    config_cls, cls, ip_cls = ((Idefics3Config, Idefics3ForConditionalGeneration, Idefics3ImageProcessorPil)
                               if family == "idefics3" else
                               (SmolVLMConfig, SmolVLMForConditionalGeneration, SmolVLMImageProcessorPil))
    config = config_cls(vision_config=vision, text_config=text, scale_factor=2,
                        image_token_id=tok.convert_tokens_to_ids("<image>"))
    image_processor = ip_cls(size={"longest_edge": 64}, max_image_size={"longest_edge": 32}, do_image_splitting=True)
    processor = {"processor_class": "Idefics3Processor" if family == "idefics3" else "SmolVLMProcessor",
                 "image_seq_len": 4}
    return cls(config), tok, image_processor, processor, None


def _llava(family: str, width: int, layers: int, heads: int):
    from transformers import LlavaConfig, LlavaForConditionalGeneration
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    tok = _tokenizer(["<image>"])
    vision = {"model_type": "clip_vision_model", "hidden_size": width, "intermediate_size": 2 * width,
              "num_hidden_layers": 2, "num_attention_heads": heads, "image_size": 28, "patch_size": 7,
              "projection_dim": width}
    text = _text(tok, width, layers, heads, model_type="llama", head_dim=width // heads)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=tok.convert_tokens_to_ids("<image>"),
                         vision_feature_layer=-1, vision_feature_select_strategy="default", image_seq_length=16)
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28})
    processor = {"processor_class": "LlavaProcessor", "patch_size": 7, "vision_feature_select_strategy": "default",
                 "num_additional_image_tokens": 1}
    return LlavaForConditionalGeneration(config), tok, image_processor, processor, None


def write_tiny_vlm(family: str, folder: str | Path, width: int = 32, layers: int = 2, heads: int = 2,
                   seed: int = 0) -> Path:
    """A random-init VLM of `family` (see TINY_FAMILIES), saved with its processor files under `folder`."""
    if family not in TINY_FAMILIES:
        raise ValueError(f"no tiny model for '{family}': choose one of {', '.join(TINY_FAMILIES)}")
    torch.manual_seed(seed)
    build = _qwen if family.startswith("qwen") else _llava if family == "llava" else _idefics3
    model, tok, image_processor, processor, chat = build(family, width, layers, heads)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    image_processor.save_pretrained(folder)
    if chat:
        (folder / "chat_template.jinja").write_text(chat)
    (folder / "processor_config.json").write_text(json.dumps(processor, indent=2))
    return folder
