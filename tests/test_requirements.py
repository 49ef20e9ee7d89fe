"""pyproject.toml's transformers lower bound is what the code needs: everything PinCLIP uses of
transformers imports and has the shape the code relies on, and the installed version meets the bound.

The bound was found by running this file and tests/test_vlm_models.py against transformers
releases installed side by side: 5.21.0 passes; 5.20.0 returns Idefics3/SmolVLM image features per
crop rather than per image (the last check below); 5.12.0 and older cannot build a Qwen-VL
processor class at all without torchvision; 5.0.0 lacks the Pil image processors' SmolVLM path.
peft 0.18.0 passes the LoRA tests; 0.17 imports a cache class transformers 5 removed.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]


def declared_bound(package: str) -> Version:
    """The `>=` bound of a core dependency in pyproject.toml."""
    found = re.search(rf'^\s*"{package}>=([\w.]+)', (ROOT / "pyproject.toml").read_text(), re.MULTILINE)
    return Version(found.group(1))


def test_transformers_provides_what_pinclip_uses():
    import transformers
    from transformers import (  # noqa: F401  (loading, configs and models of every supported family)
        AutoConfig,
        AutoImageProcessor,
        AutoModel,
        AutoModelForImageTextToText,
        AutoProcessor,
        AutoTokenizer,
        BertConfig,
        BertModel,
        Idefics3ForConditionalGeneration,
        Idefics3Processor,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLForConditionalGeneration,
        Qwen2VLProcessor,
        Qwen3VLForConditionalGeneration,
        Qwen3VLProcessor,
        SmolVLMForConditionalGeneration,
        SmolVLMProcessor,
    )
    from transformers.masking_utils import create_bidirectional_mask  # noqa: F401  (the embedded backbone)
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil  # noqa: F401
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil  # noqa: F401
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLModel
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil  # noqa: F401
    from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VLModel
    from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLModel, Qwen3VLTextModel
    from transformers.models.smolvlm.image_processing_pil_smolvlm import SmolVLMImageProcessorPil  # noqa: F401
    from transformers.utils import is_flash_attn_2_available  # noqa: F401

    for model in (Qwen2VLModel, Qwen2_5_VLModel, Qwen3VLModel):  # M-RoPE from token types, by keyword
        params = inspect.signature(model.get_rope_index).parameters
        assert {"mm_token_type_ids", "image_grid_thw", "attention_mask"} <= set(params), model.__name__
    assert {"visual_pos_masks", "deepstack_visual_embeds"} <= set(inspect.signature(Qwen3VLTextModel.forward).parameters)
    # image features come back per image, as `pooler_output` of a returned output object
    for model in (Qwen2VLModel, Qwen3VLModel):
        assert "pooler_output" in inspect.getsource(model.get_image_features)
    assert Version(transformers.__version__) >= declared_bound("transformers")


def test_image_features_come_back_per_image(tiny_vlm):
    """One entry per image, every crop of it included: what the placeholders of one image take."""
    import torch
    from synthetic import COLORS, draw
    from transformers import AutoModelForImageTextToText

    from pinclip.models.vlm.base import load_processor
    from pinclip.models.vlm.idefics3 import Idefics3

    folder = tiny_vlm("idefics3")
    processor, family = load_processor(folder), Idefics3()
    images = [draw(COLORS["red"], "circle", 60), draw(COLORS["blue"], "square", 40)]
    processed = processor(text=["<image>a", "<image>b"], images=family.images_argument(images), return_tensors="pt",
                          padding=True)
    with torch.no_grad():
        feats = family.encode_images(AutoModelForImageTextToText.from_pretrained(folder),
                                     family.vision_inputs(processed, [True, True]))
    per_row = (processed["input_ids"] == processor.image_token_id).sum(1).tolist()
    assert [f.embeds.shape[0] for f in feats] == per_row


def test_peft_provides_what_pinclip_uses():
    import peft
    from peft import LoraConfig, PeftModel, get_peft_model  # noqa: F401
    from peft.tuners.lora import LoraModel

    assert hasattr(LoraModel, "merge_and_unload") and hasattr(PeftModel, "get_base_model")
    assert Version(peft.__version__) >= declared_bound("peft")
