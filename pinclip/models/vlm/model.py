"""PinCLIP on a pretrained vision-language model: three modes as prompts on one VLM.

    model = VLMPinCLIP(cfg.model)          # cfg.model.vlm.path = a local Hugging Face VLM folder
    out = model({"images": [img, None], "texts": [["red apple", "", ...], [...]]})
    out["image"], out["text"], out["text_mask"], out["pin"]   # as PinCLIP.forward

Each mode is a prompt the VLM's own processor turns into tokens, its images into the family's
inputs (`image_grid_thw`, pixel attention masks, crops, `image_sizes`), untouched:
    image-only  [global; regional] <image> "Represent this image ..."
    text-only   "title: red apple" "Represent this text ..."
    fused       [global; regional] <image> "title: ...\\ndescription: ..." "Represent this pin ..."
The VLM's vision encoder and connector fill the image placeholders; beside them, the global and
regional tokens pooled from the same patch grid (docs/vlm.md, tagged by granularity) open the
sequence. The language model's last hidden state (left padding; "last") or the mean over valid
tokens ("mean") goes through a linear head to the largest Matryoshka dim, L2-normalized.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pinclip.config import ModelConfig
from pinclip.data.schema import TEXT_FIELDS
from pinclip.models.vision import grid_to_tokens
from pinclip.models.vlm.backbone import VLMBackbone
from pinclip.models.vlm.base import ImageFeatures

INSTRUCTIONS = {
    "image": "Represent this image for retrieval.",
    "text": "Represent this text for retrieval.",
    "pin": "Represent this pin, its image and its text, for retrieval.",
}


class VLMPinCLIP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if cfg.pin_mode != "fused":
            raise ValueError(f"model.pin_mode={cfg.pin_mode!r} is for the embedded towers; a VLM fuses in one pass")
        self.cfg = cfg
        self.vcfg = cfg.vlm
        self.backbone = VLMBackbone(cfg.vlm)
        width = self.backbone.width
        g = torch.Generator().manual_seed(0)
        tokens = 0 if cfg.vlm.regions < 0 else 1 + cfg.vlm.regions ** 2
        self.granularity = nn.Parameter(torch.randn(tokens, width, generator=g) * 0.02)
        if cfg.vlm.head == "linear":
            with torch.random.fork_rng():  # the same head for the same config, whatever ran before
                torch.manual_seed(0)
                self.head = nn.Linear(width, cfg.dims[0])
        elif cfg.vlm.head == "none":
            if cfg.dims[0] > width:
                raise ValueError(f"model.vlm.head=none: dims[0]={cfg.dims[0]} exceeds the model width {width}")
            self.head = nn.Identity()
        else:
            raise ValueError(f"model.vlm.head must be 'linear' or 'none', got {cfg.vlm.head!r}")
        # contrastive temperatures and biases (SigLIP init); 1-element vectors, which FSDP can shard
        self.it_logit_scale = nn.Parameter(torch.tensor([math.log(10.0)]))
        self.it_logit_bias = nn.Parameter(torch.tensor([-10.0]))
        self.nb_logit_scale = nn.Parameter(torch.tensor([math.log(10.0)]))
        self.nb_logit_bias = nn.Parameter(torch.tensor([-10.0]))
        self.token_counts: list[tuple[int, int]] | None = None  # set to a list to count tokens (gpu_check)

    # -- prompts ------------------------------------------------------------------------------
    def prompt(self, mode: str, body: str, with_image: bool) -> str:
        processor, family = self.backbone.processor, self.backbone.family
        if self.backbone.use_chat:
            content = ([{"type": "image"}] if with_image else []) + [{"type": "text", "text": body}]
            messages = [{"role": "system", "content": INSTRUCTIONS[mode]}, {"role": "user", "content": content}]
            return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        image = family.image_placeholder(processor) if with_image else ""
        return f"{image}{body}\n{INSTRUCTIONS[mode]}"

    def _truncated(self, texts: list[list[str]]) -> list[list[str]]:
        """Every field cut to max_text_tokens tokens (images are never cut)."""
        flat = [t for row in texts for t in row]
        tok = self.backbone.processor.tokenizer
        n = self.vcfg.max_text_tokens
        ids = tok(flat, add_special_tokens=False, truncation=True, max_length=n)["input_ids"] if flat else []
        cut = [tok.decode(i) if len(i) >= n else t for t, i in zip(flat, ids)]
        width = len(TEXT_FIELDS)
        return [cut[k : k + width] for k in range(0, len(cut), width)]

    # -- images -------------------------------------------------------------------------------
    def image_features(self, processed: dict[str, Any], row_images: list[int], cached: list[Any]
                       ) -> dict[int, ImageFeatures]:
        """{pin: features} for the images of `processed` (rows' pins in order), from `cached` where given."""
        pins = [b for b in row_images if b >= 0]
        feats = {b: cached[b] for b in pins if cached[b] is not None}
        todo = [k for k, b in enumerate(pins) if b not in feats]
        if todo:
            family = self.backbone.family
            vision = family.vision_inputs(processed, [b >= 0 for b in row_images])
            vision = family.select_images(vision, todo)
            vision = {k: v.to(self.backbone.device) for k, v in vision.items()}
            for k, f in zip(todo, family.encode_images(self.backbone.hf, vision)):
                feats[pins[k]] = f
        return feats

    def encode_image_features(self, images: list[Any]) -> list[ImageFeatures]:
        """Vision features of decoded images (the feature cache's compute step)."""
        processed = self._process([self.prompt("image", "", True)] * len(images), images)
        feats = self.image_features(processed, list(range(len(images))), [None] * len(images))
        return [feats[i] for i in range(len(images))]

    # -- one mode -----------------------------------------------------------------------------
    def _process(self, prompts: list[str], images: list[Any]) -> dict[str, Any]:
        family = self.backbone.family
        present = family.images_argument(images)
        kwargs = {"images": present} if any(img is not None for img in images) else {}
        # never truncated: a cut prompt would lose image tokens (fields are cut beforehand)
        return self.backbone.processor(text=prompts, return_tensors="pt", padding=True, truncation=False,
                                       max_length=None, **kwargs)

    def encode_rows(self, processed: dict[str, Any], row_images: list[int], feats: dict[int, ImageFeatures]
                    ) -> torch.Tensor:
        """Processed prompts (R rows; row r shows pin row_images[r]'s image, or none if -1) -> (R, D)."""
        bb = self.backbone
        device = bb.device
        ids = processed["input_ids"].to(device)  # (R, L), left padded
        mask = processed["attention_mask"].to(device).bool()  # (R, L)
        x = bb.hf.get_input_embeddings()(ids)  # (R, L, W)
        image_mask = ids == bb.image_token_id  # (R, L)
        shown = [b for b in row_images if b >= 0]
        deepstack: list[torch.Tensor] = []
        if shown:
            fill = torch.cat([feats[b].embeds for b in shown]).to(device, x.dtype)  # (N_img_tokens, W), row-major
            x = x.masked_scatter(image_mask.unsqueeze(-1), fill)
            for k in range(len(feats[shown[0]].deepstack)):
                deepstack.append(torch.cat([feats[b].deepstack[k] for b in shown]).to(device, x.dtype))
        x, mask, ids, image_mask = self._with_granularity(x, mask, ids, image_mask, row_images, feats)
        grid = processed.get("image_grid_thw")
        positions = bb.family.position_ids(bb.hf, ids, mask, grid.to(device) if grid is not None else None)
        hidden = bb.family.run_text_model(bb.hf, x, mask, positions, image_mask, deepstack)  # (R, L', W)
        if self.token_counts is not None:  # (valid tokens, length) per row, for FLOP counts
            self.token_counts += [(n, n) for n in mask.sum(1).tolist()]
        return F.normalize(self._head(self._pool(hidden, mask)), dim=-1)  # (R, D)

    def _with_granularity(self, x, mask, ids, image_mask, row_images, feats):
        """Prepend each image row's global + regional tokens (zeros, masked, for rows without an image)."""
        k = self.granularity.shape[0]
        if k == 0:
            return x, mask, ids, image_mask
        rows = len(row_images)
        gran = x.new_zeros(rows, k, x.shape[-1])  # (R, K, W)
        has = torch.tensor([b >= 0 for b in row_images], device=x.device)  # (R,)
        if has.any():
            grids = [feats[b].grid() for b in row_images if b >= 0]  # (W, h, w) each
            pooled = torch.cat([grid_to_tokens(g.unsqueeze(0).to(x.device).float(), self.vcfg.regions, False)
                                for g in grids])  # (R_img, K, W)
            gran[has] = (pooled + self.granularity).to(x.dtype)  # (R_img, K, W)
        pad = torch.full((rows, k), self.backbone.pad_token_id, dtype=ids.dtype, device=ids.device)
        return (torch.cat([gran, x], 1), torch.cat([has.unsqueeze(1).expand(-1, k), mask], 1),
                torch.cat([pad, ids], 1), torch.cat([torch.zeros_like(pad, dtype=torch.bool), image_mask], 1))

    def _pool(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.vcfg.pooling == "last":
            return hidden[:, -1]  # (R, W): left padding puts every row's last token last
        m = mask.unsqueeze(-1)  # (R, L, 1)
        total = torch.where(m, hidden, torch.zeros_like(hidden)).sum(1)  # (R, W); padding never enters
        return total / m.sum(1).clamp_min(1).to(hidden.dtype)

    def _head(self, pooled: torch.Tensor) -> torch.Tensor:
        if isinstance(self.head, nn.Linear):
            return self.head(pooled.to(self.head.weight.dtype))
        return pooled.float()[:, : self.cfg.dims[0]]

    # -- the three modes ----------------------------------------------------------------------
    def forward(self, batch: dict[str, Any], modes: tuple[str, ...] = ("image", "text", "pin")
                ) -> dict[str, torch.Tensor]:
        """batch: {"images": [PIL or None] (B), "texts": [[str] * F] (B), optional "image_features":
        [ImageFeatures or None] (B) from the cache, optional "pin_texts" (B, F): the fields the fused
        prompt shows, when they differ}. Returns PinCLIP.forward's dict for the modes asked."""
        images, texts = batch["images"], self._truncated(batch["texts"])
        pin_texts = self._truncated(batch["pin_texts"]) if "pin_texts" in batch else texts
        cached = batch.get("image_features") or [None] * len(images)
        b = len(images)
        out: dict[str, torch.Tensor] = {}
        feats: dict[int, ImageFeatures] = {}
        for mode in ("image", "pin"):
            if mode not in modes:
                continue
            rows = [i if images[i] is not None else -1 for i in range(b)]
            bodies = [""] * b if mode == "image" else [_fields_body(t) for t in pin_texts]
            processed = self._process([self.prompt(mode, body, r >= 0) for body, r in zip(bodies, rows)],
                                      [images[i] if r >= 0 else None for i, r in enumerate(rows)])
            if not feats:
                feats = self.image_features(processed, rows, cached)
            out[mode] = self.encode_rows(processed, rows, feats)
        if "text" in modes:
            pairs = [(i, f) for i in range(b) for f in range(len(TEXT_FIELDS)) if texts[i][f]]
            device = self.backbone.device
            text_mask = torch.zeros(b, len(TEXT_FIELDS), dtype=torch.bool, device=device)
            text = torch.zeros(b, len(TEXT_FIELDS), self.cfg.dims[0], device=device)
            if pairs:
                prompts = [self.prompt("text", f"{TEXT_FIELDS[f]}: {texts[i][f]}", False) for i, f in pairs]
                emb = self.encode_rows(self._process(prompts, [None] * len(pairs)), [-1] * len(pairs), {})
                pin_idx, field_idx = (torch.tensor(v, device=device) for v in zip(*pairs))
                text = text.to(emb.dtype).index_put((pin_idx, field_idx), emb)  # (B, F, D)
                text_mask[pin_idx, field_idx] = True
            out["text"], out["text_mask"] = text, text_mask
        return out


def _fields_body(fields: list[str]) -> str:
    """The present fields of a pin, tagged by name, one per line."""
    return "\n".join(f"{name}: {value}" for name, value in zip(TEXT_FIELDS, fields) if value)
