"""Configuration: one small dataclass per concern, presets as data, YAML files with key=value overrides.

    cfg = load_config("configs/demo.yaml", ["train.steps=200", "loss.neighbor_weight=0.5"])

Only the CLI and the trainer see a whole `Config`; library functions take the piece they need.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml


@dataclass
class VisionConfig:
    name: str = "efficientnet-lite0"  # "efficientnet-lite0" | "tiny-cnn" | a local Hugging Face folder
    image_size: int = 224
    regions: int = 2  # regional tokens: regions x regions average pools beside the global token
    patches: bool = False  # also pass every patch of the grid as a token
    unfreeze_last: int = 0  # 0 = frozen tower (features cached on disk); >0 = train its last blocks


@dataclass
class BackboneConfig:
    name: str = "minilm"  # "minilm" | "tiny-bert" | a local Hugging Face folder (BERT-like or Qwen2-like)
    train_layers: int = 2  # top layers trained; -1 = all; 0 = frozen. Visual tokens enter below them.
    pooling: str = "mean"  # "mean" | "cls" | "last"
    max_field_tokens: int = 24  # per text field, [CLS]/[SEP] included
    finetune: str = "full"  # the trained layers: "full" (every weight) | "lora" (low-rank adapters, weights kept)
    lora_rank: int = 8
    lora_alpha: float = 16.0


@dataclass
class VLMConfig:
    """A pretrained vision-language model as the whole backbone (replaces vision + backbone above)."""

    path: str = ""  # a local Hugging Face VLM folder (Qwen2/2.5/3-VL, Idefics3/SmolVLM, LLaVA); "" = embedded
    finetune: str = "lora"  # "lora" | "full" (every language-model layer) | "frozen" (zero-shot)
    lora_rank: int = 16
    lora_alpha: float = 32.0
    lora_dropout: float = 0.0
    lora_vision: bool = False  # adapters in the vision encoder too (its features are then not cached)
    pooling: str = "last"  # "last" (left padding) | "mean"
    regions: int = 2  # global + regions x regions tokens pooled from the patch grid; -1 = none
    head: str = "linear"  # "linear" (trained, to dims[0]) | "none" (the pooled state, truncated to dims[0])
    prompt: str = "auto"  # "auto" (the chat template when the processor has one) | "chat" | "plain"
    max_text_tokens: int = 64  # per text field
    max_image_tokens: int = 256  # tokens per image for dynamic-resolution families; 0 = the processor's own
    attn_implementation: str = "sdpa"  # "sdpa" | "eager" | "flash_attention_2"
    gradient_checkpointing: bool = False
    dtype: str = "auto"  # weights: "auto" (bf16 with a GPU, else fp32) | "bf16" | "fp32"


@dataclass
class ModelConfig:
    vision: VisionConfig = field(default_factory=VisionConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    vlm: VLMConfig = field(default_factory=VLMConfig)
    dims: tuple[int, ...] = (256, 128, 64)  # Matryoshka dims; the first is the full embedding
    projector_hidden: int = 1024
    pin_mode: str = "fused"  # "fused": one pass over [visual; text] tokens | "late": unit(image) + unit(mean text)
    #                          | "hybrid": unit(late + tanh(g) * fused), g a learned gate starting at 0
    pool_balance: bool = False  # fused pass: pool each modality on its own, then average them (equal weight)
    mode_tokens: bool = False  # a learned embedding per mode on the summary token: an image-only fused pin
    #                            is then not the image embedding, each free to serve its own task


@dataclass
class LossConfig:
    image_text: str = "siglip"  # "siglip" | "infonce"
    # title counts double: it is the text a search query looks like. On the demo corpus this took
    # PinText text->image from 0.789 to 0.816 (warm) and 0.507 to 0.524 (cold) against weight 1.0
    field_weights: dict[str, float] = field(
        default_factory=lambda: {"title": 2.0, "description": 0.5, "caption": 1.0, "queries": 1.0, "annotations": 0.5}
    )
    pin_text_weight: float = 0.5  # fused pin <-> text term
    neighbor_weight: float = 1.0  # lambda of L = L_image_text + lambda * L_neighbor
    image_text_weight: float = 1.0  # 0 switches the image-text terms off (ablations)
    image_neighbor_weight: float = 0.0  # neighbor term on the image embedding too (visual search)
    quant_aware: bool = False  # add the straight-through global int8 term
    chunk_size: int = 0  # >0: compute contrastive losses over row chunks
    mask_duplicates: bool = True  # duplicates (same group or text) in a batch are not negatives
    mask_boards_in_image_text: bool = False  # pins sharing a training board are not image-text negatives
    neighbor_candidates: str = "all"  # "all": every other batch row is a negative | "partners": the other
    #                                   side only (a pin against the other neighbors, as in CLIP)
    logq: bool = True  # subtract each candidate's log sampling probability (sampling-bias correction)
    board_weight: float = 0.5  # pin <-> the titles of its training boards (query-like text from the graph)
    distill_weight: float = 0.0  # relational distillation toward the frozen towers (keeps generality)
    distill_tau: float = 0.05


@dataclass
class GraphConfig:
    walkers_per_pin: int = 64
    walk_length: int = 4
    restart_prob: float = 0.5
    top_k: int = 10
    board_damping: float = 0.5  # step into a board with probability ~ degree^-damping
    hard_ranks: tuple[int, ...] = (20, 60)  # walk ranks [lo, hi) give hard negatives (with train.hard_negatives)


@dataclass
class TrainConfig:
    data_dir: str = "runs/demo/data"  # pins.*, boards.* (parquet, jsonl or csv), splits.json
    pins: str = ""  # your own tables instead of data_dir: pins table (.parquet, .jsonl or .csv) ...
    boards: str = ""  # ... board edges table (same formats) ...
    splits: str = ""  # ... and splits.json (empty: nothing held out)
    out_dir: str = "runs/demo/train"
    cache_dir: str = "runs/cache"
    steps: int = 300
    batch_size: int = 128  # global batch (pins); half anchors, half their graph neighbors
    lr: float = 5e-4
    backbone_lr: float = 5e-5
    scalar_lr: float = 1e-2  # contrastive temperatures and biases (own group, no weight decay)
    weight_decay: float = 0.05
    warmup_steps: int = 50
    probe_steps: int = 0  # LP-FT: only the new layers train for this many steps, then the pretrained ones join
    grad_clip: float = 1.0
    seed: int = 0
    eval_every: int = 50  # validation (PinText Recall@10 on the validation pins) every this many steps
    keep_best: bool = True  # final/ is the validated step with the best Recall@10 (saved to best/), not the last
    patience: int = 2  # stop after this many validations without improvement (0: never stop early)
    checkpoint_every: int = 100
    val_max_pins: int = 500
    device: str = "auto"  # "auto" | "cpu" | "cuda"
    precision: str = "auto"  # "auto": bf16 autocast on a GPU or a CPU with AVX512-BF16/AMX, else fp32 | "fp32" | "bf16"
    train_fraction: float = 1.0  # share of the training pins used (dataset-scaling curves)
    hard_negatives: bool = True  # one hard negative per anchor (graph.hard_ranks) joins the batch
    board_titles: int = 2  # with loss.board_weight: titles of up to this many training boards per row
    memory_size: int = 0  # cross-batch memory of recent pin embeddings, extra neighbor negatives
    field_dropout: float = 0.0  # fused pass: each text field dropped with this probability
    text_dropout: float = 0.0  # fused pass: all text dropped (an image-only pin) with this probability
    title_only: float = 0.0  # fused pass: only the title kept with this probability
    feature_noise: float = 0.0  # Gaussian noise on cached visual tokens, in units of their std
    token_dropout: float = 0.0  # each regional visual token zeroed with this probability
    num_threads: int = 0  # CPU threads for torch (0 = torch's default)
    parallel: str = "ddp"  # "ddp" (replicated weights) | "fsdp" (FSDP2-sharded, Distributed Checkpoint)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    graph: GraphConfig = field(default_factory=GraphConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


PRESETS: dict[str, dict[str, Any]] = {
    # Random-init tiny towers: the whole pipeline runs on a CPU in seconds (tests, CI).
    "tiny": {
        "model": {
            "vision": {"name": "tiny-cnn", "image_size": 32},
            "backbone": {"name": "tiny-bert", "train_layers": 1, "max_field_tokens": 12},
            "dims": [32, 16],
            "projector_hidden": 64,
        },
        "graph": {"walkers_per_pin": 16, "walk_length": 2},
        "train": {"steps": 4, "batch_size": 16, "eval_every": 2, "checkpoint_every": 2, "warmup_steps": 1,
                  "val_max_pins": 32},
    },
    # Pretrained EfficientNet-Lite0 + MiniLM, top 2 layers trained: about 10 minutes on 2 CPU cores. The hybrid
    # pin (late fusion + gated fused correction), balanced pooling and fused-pass field dropout were chosen on
    # validation against pure early fusion (selection score 0.331 vs 0.315; docs/training.md).
    # Its learning rates (four times the trainer's defaults) were chosen by `pinclip tune` on validation
    # (selection score 0.352 vs 0.344 at twice, 0.331 at the defaults, 0.312 at half; results/demo/tune.md).
    "demo": {"model": {"pin_mode": "hybrid", "pool_balance": True},
             "train": {"text_dropout": 0.25, "title_only": 0.25, "field_dropout": 0.2, "lr": 2e-3,
                       "backbone_lr": 2e-4}},
    # A pretrained VLM (model.vlm.path, default ./models/vlm) fine-tuned with LoRA on GPUs: bf16,
    # gradient checkpointing, FSDP2 across ranks (one GPU: no sharding), Distributed Checkpoints.
    "gpu": {
        "model": {"vlm": {"path": "models/vlm", "finetune": "lora", "lora_rank": 16, "lora_alpha": 32,
                          "gradient_checkpointing": True, "max_image_tokens": 256, "max_text_tokens": 64}},
        "train": {"steps": 3000, "batch_size": 256, "lr": 1e-3, "backbone_lr": 1e-4, "warmup_steps": 100,
                  "eval_every": 500, "checkpoint_every": 500, "parallel": "fsdp"},
        "loss": {"board_weight": 0.0},  # the board-title term reads the embedded towers' text states
    },
}


def _merge(base: Any, updates: dict[str, Any], where: str) -> Any:
    """Recursively apply a nested dict onto a dataclass instance, checking names and types."""
    for key, value in updates.items():
        if not hasattr(base, key):
            known = [f.name for f in dataclasses.fields(base)]
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f"; did you mean '{where}{close[0]}'?" if close else f" (keys of '{where or 'the config'}': " \
                f"{', '.join(known)})"
            raise ValueError(f"unknown config key '{where}{key}'{hint}")
        current = getattr(base, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ValueError(f"config key '{where}{key}' expects a mapping, got {value!r}")
            _merge(current, value, f"{where}{key}.")
        else:
            setattr(base, key, _coerce(value, current, f"{where}{key}"))
    return base


def _coerce(value: Any, current: Any, name: str) -> Any:
    if isinstance(current, bool):
        if isinstance(value, str):
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
        if isinstance(value, bool):
            return value
        raise ValueError(f"config key '{name}' expects true/false, got {value!r}")
    if isinstance(current, tuple):
        if isinstance(value, str):
            value = [v for v in value.strip("[]() ").split(",") if v.strip()]
        return tuple(type(current[0])(v) for v in value) if current else tuple(value)
    if isinstance(current, (int, float)):
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"config key '{name}' expects a number, got {value!r}") from None
        if isinstance(current, int):
            if not number.is_integer():
                raise ValueError(f"config key '{name}' expects an integer, got {value!r}")
            return int(number)
        return number
    if isinstance(current, dict) and isinstance(value, str):
        return yaml.safe_load(value)
    return value


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """['train.steps=10', 'loss.image_text=infonce'] -> nested dict (values parsed as YAML scalars)."""
    nested: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override '{item}' is not of the form key=value")
        key, raw = item.split("=", 1)
        node = nested
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = yaml.safe_load(raw) if raw else ""
    return nested


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                preset: str | None = None) -> Config:
    """Preset (from the file's `preset:` key or the argument) <- file <- overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"config file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise ValueError(f"{path}: not valid YAML{where}: {getattr(err, 'problem', None) or err}") from None
        except UnicodeDecodeError:
            raise ValueError(f"{path}: not a text file (expected UTF-8 YAML)") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a mapping at the top level")
    preset = data.pop("preset", None) or preset or "demo"
    if preset not in PRESETS:
        raise ValueError(f"unknown preset '{preset}' (known: {', '.join(PRESETS)})")
    cfg = _merge(Config(), copy.deepcopy(PRESETS[preset]), "")
    cfg = _merge(cfg, data, "")
    given = parse_overrides(overrides or [])
    cfg = _merge(cfg, given, "")
    asked = {**(data.get("model") or {}), **(given.get("model") or {})}
    if cfg.model.vlm.path and "pin_mode" not in asked:  # a VLM fuses in one pass: the towers' pin forms do not apply
        cfg.model.pin_mode, cfg.model.pool_balance = "fused", False
    return cfg


def config_to_dict(cfg: Config) -> dict[str, Any]:
    d = asdict(cfg)
    d["model"]["dims"] = list(cfg.model.dims)
    return d


def config_from_dict(d: dict[str, Any]) -> Config:
    return _merge(Config(), copy.deepcopy(d), "")


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
