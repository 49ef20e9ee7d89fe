"""The trainer: one code path for 1 or N processes (torchrun; gloo on CPU, nccl on GPU).

    pinclip train --config configs/demo.yaml                         # one process
    torchrun --nproc_per_node 2 -m pinclip train --config configs/tiny.yaml   # two ranks, same global batch

Each step takes the global batch of that step (a pure function of seed and step), and rank r
embeds its slice; contrastive negatives are gathered across ranks, so the loss curve matches one
process with the same global batch. The model stays in eval mode (no dropout, frozen batch-norm
statistics) so runs are deterministic. Checkpoints hold everything needed for an exact resume.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import yaml
from torch.utils.flop_counter import FlopCounterMode
from tqdm import tqdm

from pinclip.config import Config, config_to_dict
from pinclip.data.schema import TEXT_FIELDS
from pinclip.eval.metrics import retrieval_metrics
from pinclip.losses.gather import all_gather_no_grad, rank_and_world
from pinclip.losses.image_text import initial_logit_scale_and_bias
from pinclip.losses.memory import EmbeddingMemory
from pinclip.models.build import build_model, is_vlm
from pinclip.models.embedder import embed_rows
from pinclip.models.features import image_features
from pinclip.models.pinclip import PinCLIP
from pinclip.models.text_states import TextStates, compute_text_states, field_strings
from pinclip.quant import fit_global_affine
from pinclip.train import parallel
from pinclip.train.best import BestCheckpoint
from pinclip.train.checkpoint import save_checkpoint
from pinclip.train.data_source import load_source, training_source
from pinclip.train.dataset import BatchConfig, TrainingData, batch_at, prepare_training, share_board_mask
from pinclip.train.objective import BatchContext, objective


@dataclass
class Features:
    vis: np.ndarray  # (P, T, C) float16 visual tokens of every pin
    has_image: np.ndarray  # (P,) bool
    states: TextStates
    feature_std: float = 1.0  # std of the visual tokens of pins with an image (noise scale)
    teacher_text: np.ndarray | None = None  # (P, F, W) frozen towers' unit field embeddings (distillation)
    title_states: TextStates | None = None  # entry-layer states of the training boards' titles ("queries" field)

    @property
    def has_text(self) -> np.ndarray:
        return self.states.length.sum(1) > 0

    def embed(self, model: PinCLIP, rows: np.ndarray, modes: tuple[str, ...] = ("image", "text", "pin"),
              device: torch.device | str = "cpu") -> dict[str, np.ndarray]:
        return embed_rows(model, self.vis, self.has_image, self.states, rows, modes, device=device)


def setup_distributed(device: str) -> tuple[int, int, torch.device]:
    """Init the process group when launched by torchrun; (rank, world, device)."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device == "cuda" else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    if device == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return rank, world, torch.device("cuda", local)
    return rank, world, torch.device("cpu")


def compute_features(model: PinCLIP, data: TrainingData, cache_dir: str, rank: int, progress: bool,
                     teacher: bool = False, titles: bool = False) -> Features:
    """Image features and text states of every pin (and the frozen teacher's field embeddings when
    `teacher`); rank 0 fills the caches, the others read them. A VLM's inputs instead: its images
    scanned and, with a frozen vision side, its vision cache filled."""
    pins = data.dataset.pins
    if is_vlm(model):
        from pinclip.models.vlm.inputs import prepare_vlm_inputs

        world = dist.get_world_size() if dist.is_initialized() else 1
        return prepare_vlm_inputs(model, pins, cache_dir, rank, world, progress)
    texts = field_strings(pins.texts, len(pins))
    for turn in (0, 1):
        if (rank == 0) == (turn == 0):
            vis, ok = image_features(model.vision, model.cfg.vision, pins.images, cache_dir,
                                     progress=progress and rank == 0)
            states = compute_text_states(model.backbone, texts, cache_dir=cache_dir, progress=progress and rank == 0)
            teacher_text = teacher_field_embeddings(model, texts, cache_dir, progress and rank == 0) if teacher else None
            title_states = compute_text_states(model.backbone, title_rows(data.board_titles), cache_dir=cache_dir,
                                               progress=False) if titles else None
        if dist.is_initialized():
            dist.barrier()
    std = float(vis[ok].astype(np.float32).std()) if ok.any() else 1.0
    return Features(vis, ok, states, std, teacher_text, title_states)


QUERY_FIELD = TEXT_FIELDS.index("queries")


def title_rows(titles: list[str]) -> list[list[str]]:
    """Board titles as rows of text fields, each in the "queries" field (the text a search query looks like)."""
    return [[t if f == QUERY_FIELD else "" for f in range(len(TEXT_FIELDS))] for t in titles]


def board_title_embeddings(model: PinCLIP, title_states: TextStates, boards: np.ndarray, device: torch.device
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Text embeddings (b, K, D) of the board titles of each row (boards (b, K), -1 padding) and their mask."""
    from pinclip.models.text_states import text_batch

    present = boards >= 0  # (b, K)
    tb = text_batch(title_states, boards[present])
    emb = model.encode_text(tb["field_states"].to(device), tb["field_mask"].to(device),
                            tb["field_id"].to(device))  # (M, D), one field per title
    out = emb.new_zeros(*boards.shape, emb.shape[-1])  # (b, K, D)
    out[torch.from_numpy(present).to(device)] = emb
    return out, torch.from_numpy(present).to(device)


def teacher_field_embeddings(model: PinCLIP, texts: list[list[str]], cache_dir: str, progress: bool) -> np.ndarray:
    """(P, F, W) unit mean-pooled embeddings of every field by the whole frozen backbone (the `frozen`
    baseline's text tower), cached like any text state."""
    import copy

    from pinclip.baselines.frozen import mean_pooled_fields
    from pinclip.models.backbone import Backbone

    frozen_cfg = copy.deepcopy(model.cfg.backbone)
    frozen_cfg.train_layers = 0
    frozen = Backbone(frozen_cfg).to(next(model.parameters()).device).eval()
    fields, _ = mean_pooled_fields(compute_text_states(frozen, texts, cache_dir=cache_dir, progress=progress))
    return fields / np.maximum(np.linalg.norm(fields, axis=-1, keepdims=True), 1e-12)


FLOP_STEPS = 3  # training steps whose FLOPs are counted (torch's FlopCounterMode); their mean times the steps
SCALARS = ("it_logit_scale", "it_logit_bias", "nb_logit_scale", "nb_logit_bias", "pin_gate")


def build_optimizer(model: PinCLIP, cfg: Config) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW with three learning rates: pretrained layers (backbone_lr), new layers (lr), and the
    contrastive temperatures and biases (scalar_lr, no weight decay); warmup then cosine decay.

    With train.probe_steps = N (LP-FT: linear probe, then fine-tune), the pretrained layers stay exactly as
    they are for the first N steps (learning rate 0, so no weight decay either) while the new layers fit
    them; their own warmup and cosine decay then run over the remaining steps."""
    groups: dict[tuple[float, float, bool], list[torch.nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        pretrained = name.startswith(("backbone.", "vision."))
        if name in SCALARS:
            lr, pretrained = cfg.train.scalar_lr, False
        else:
            lr = cfg.train.backbone_lr if pretrained else cfg.train.lr
        decay = 0.0 if p.ndim < 2 or "logit" in name else cfg.train.weight_decay
        groups.setdefault((lr, decay, pretrained), []).append(p)
    optimizer = torch.optim.AdamW([{"params": ps, "lr": lr, "weight_decay": wd} for (lr, wd, _), ps in groups.items()],
                                  betas=(0.9, 0.98), eps=1e-6)
    warmup, total = max(cfg.train.warmup_steps, 1), max(cfg.train.steps, 1)
    probe = max(0, min(cfg.train.probe_steps, total - 1))

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(total - warmup, 1))))

    def after_probe(step: int) -> float:
        if step < probe:
            return 0.0
        step -= probe
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(total - probe - warmup, 1))))

    lambdas = [after_probe if pretrained and probe else schedule for (_, _, pretrained) in groups]
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)


def batch_config(cfg: Config) -> BatchConfig:
    t = cfg.train
    return BatchConfig(t.batch_size, t.seed, t.hard_negatives, t.field_dropout, t.text_dropout, t.title_only,
                       t.board_titles if cfg.loss.board_weight > 0 else 0)


def init_contrastive_scalars(model: PinCLIP, cfg: Config) -> None:
    """Temperatures and biases for the batch actually used: SigLIP's bias starts at -log(N) for N pins per
    batch (a positive is 1 in N), not at the -10 that suits a 32k batch."""
    rows = cfg.train.batch_size + (cfg.train.batch_size // 2 if cfg.train.hard_negatives else 0)
    scale, bias = initial_logit_scale_and_bias(cfg.loss.image_text, batch_size=rows)
    with torch.no_grad():
        model.it_logit_scale.fill_(scale)
        model.it_logit_bias.fill_(bias)


def augment_features(vis: torch.Tensor, cfg: Config, step: int, rows: np.ndarray, total: int, feature_std: float
                     ) -> torch.Tensor:
    """Feature-level augmentation of this rank's cached visual tokens (b, T, C): Gaussian noise and
    regional-token dropout, drawn for the whole global batch of `total` rows from (seed, step) in the
    batch's canonical order and indexed by `rows` (their canonical positions), so 1 or N ranks see the
    same noise."""
    if cfg.train.feature_noise <= 0 and cfg.train.token_dropout <= 0:
        return vis
    generator = torch.Generator().manual_seed(int(np.random.default_rng([cfg.train.seed, 4, step]).integers(2**62)))
    index = torch.from_numpy(rows)
    noise = torch.randn((total, *vis.shape[1:]), generator=generator)[index]  # (b, T, C)
    drop = (torch.rand((total, vis.shape[1]), generator=generator) < cfg.train.token_dropout)[index]  # (b, T)
    if cfg.train.feature_noise > 0:
        vis = vis + cfg.train.feature_noise * feature_std * noise
    if cfg.train.token_dropout > 0 and vis.shape[1] > 1:
        drop[:, 0] = False  # the global token always stays
        vis = vis.masked_fill(drop[..., None], 0.0)
    return vis


def local_batch(data: TrainingData, feats: Features, step: int, cfg: Config, rank: int, world: int,
                device: torch.device, bank: EmbeddingMemory | None = None
                ) -> tuple[dict[str, torch.Tensor], BatchContext]:
    """This rank's rows [anchors; partners; hard] of the global batch and the batch's global masks."""
    from pinclip.models.text_states import text_batch

    gb = batch_at(data, step, batch_config(cfg), world)
    b = len(gb.rows) // world
    lo, hi = rank * b, (rank + 1) * b
    rows = gb.rows[lo:hi]
    if isinstance(feats, Features):
        batch = text_batch(feats.states, rows, pin_keep=gb.fused_keep[lo:hi])
        vis = torch.from_numpy(feats.vis[rows].astype(np.float32))
        batch["vis"] = augment_features(vis, cfg, step, gb.canonical[lo:hi], len(gb.rows), feats.feature_std)
        batch["has_image"] = torch.from_numpy(feats.has_image[rows])
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
    else:  # a VLM's images and texts (the fused prompt keeps the fields the batch keeps)
        batch = feats.batch(rows, pin_keep=gb.fused_keep[lo:hi])
    bank_ignore = None
    if bank is not None and len(bank):
        pins = bank.pins.cpu().numpy()
        blocked = share_board_mask(data, rows, pins) | (data.group[rows][:, None] == data.group[pins][None, :])
        bank_ignore = torch.from_numpy(blocked).to(device)
    ctx = BatchContext(gb.anchors, gb.extra, torch.from_numpy(gb.has_neighbor[rank]).to(device),
                       torch.from_numpy(gb.same).to(device), torch.from_numpy(gb.share_board).to(device),
                       torch.from_numpy(gb.log_q).float().to(device), torch.from_numpy(gb.rows).to(device),
                       torch.from_numpy(gb.canonical).to(device), bank_ignore)
    ctx.boards = gb.boards[lo:hi]
    if feats.teacher_text is not None:
        text, pin = teacher_rows(feats, rows, gb.fused_keep[lo:hi])
        ctx.teacher_text, ctx.teacher_pin = torch.from_numpy(text).to(device), torch.from_numpy(pin).to(device)
    return batch, ctx


def teacher_rows(feats: Features, rows: np.ndarray, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Teacher field embeddings (b, F, W) and teacher pins (b, C + W) of batch rows, the pin formed as the
    `frozen` baseline forms it (unit image beside the unit mean of the fields the fused pass kept)."""
    def unit(x: np.ndarray) -> np.ndarray:
        return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)

    text = feats.teacher_text[rows].astype(np.float32)  # (b, F, W)
    image = unit(feats.vis[rows, 0].astype(np.float32)) * feats.has_image[rows, None]  # (b, C) global token
    kept = unit((text * keep[..., None]).sum(1))  # (b, W)
    return text, unit(np.concatenate([image, kept], axis=1))


def validate(model: PinCLIP, data: TrainingData, feats: Features, cfg: Config, device: torch.device) -> dict:
    """PinText Recall@10 on the validation pins (image -> own title, title -> own image)."""
    rows = data.val_rows[: cfg.train.val_max_pins]
    rows = rows[feats.has_image[rows] & feats.has_text[rows]]
    if len(rows) < 2:
        return {}
    emb = feats.embed(model, rows, ("image", "text"), device=device)
    first = emb["text_mask"].argmax(1)  # first present field of each pin
    text = emb["text"][np.arange(len(rows)), first]  # (N, D)
    own = [np.array([i]) for i in range(len(rows))]
    i2t = retrieval_metrics(emb["image"], text, own, ks=(10,))
    t2i = retrieval_metrics(text, emb["image"], own, ks=(10,))
    return {"val_i2t_recall@10": i2t["recall@10"], "val_t2i_recall@10": t2i["recall@10"],
            "val_recall@10": (i2t["recall@10"] + t2i["recall@10"]) / 2}


def calibrate_quant(model: PinCLIP, data: TrainingData, feats: Features, device: torch.device, n: int = 2000) -> dict:
    """Global int8 parameters fitted on a mix of image, text and pin embeddings of training pins."""
    rng = np.random.default_rng(0)
    rows = np.sort(rng.choice(data.train_rows, min(n, len(data.train_rows)), replace=False))
    emb = feats.embed(model, rows, device=device)
    mix = np.concatenate([emb["image"], emb["pin"], emb["text"][emb["text_mask"]]])
    return fit_global_affine(mix, method="percentile", percentile=99.99).to_dict()


def train(cfg: Config, resume: bool = True, progress: bool = True) -> Path:
    """Train, validate, checkpoint; returns the folder of the final checkpoint."""
    if cfg.train.num_threads > 0:
        torch.set_num_threads(cfg.train.num_threads)
    rank, world, device = setup_distributed(cfg.train.device)
    torch.manual_seed(cfg.train.seed)
    out_dir = Path(cfg.train.out_dir)
    started = time.perf_counter()
    dataset = load_source(training_source(cfg.train))  # bad tables stop here, before any output is written
    out_dir.mkdir(parents=True, exist_ok=True)
    data = prepare_training(dataset, cfg.graph, cfg.train.seed, cfg.train.train_fraction, progress and rank == 0,
                            hard_negatives=cfg.train.hard_negatives)
    model = build_model(cfg.model).to(device).eval()
    if is_vlm(model):
        from pinclip.models.vlm.inputs import check_training_config

        check_training_config(cfg)
    init_contrastive_scalars(model, cfg)
    features_started = time.perf_counter()
    feats = compute_features(model, data, cfg.train.cache_dir, rank, progress, teacher=cfg.loss.distill_weight > 0,
                             titles=cfg.loss.board_weight > 0)
    setup_s = {"prepare_seconds": features_started - started, "features_seconds": time.perf_counter() - features_started}
    bf16 = use_bf16(cfg.train.precision, device)
    if cfg.train.parallel == "fsdp" and world > 1:
        model = parallel.shard_model(model, bf16=bf16)
    sharded = parallel.is_sharded(model)  # every rank then runs every forward (validation too)
    optimizer, scheduler = build_optimizer(model, cfg)
    bank = EmbeddingMemory(cfg.train.memory_size, cfg.model.dims[0], device) if cfg.train.memory_size else None
    start = _maybe_resume(out_dir / "last", model, optimizer, scheduler, device, bank) if resume else 0
    if not sharded:
        _broadcast_parameters(model)
    log = _Log(out_dir / "metrics.jsonl", start, enabled=rank == 0)
    if (rank == 0 or sharded) and start == 0:
        log.write({"step": 0, **validate(model, data, feats, cfg, device)})
    bar = tqdm(range(start, cfg.train.steps), desc="train", unit="step", disable=not progress or rank != 0 or None, initial=start, total=cfg.train.steps)
    t0, pins_seen, step_flops = time.perf_counter(), 0, []
    keeper = BestCheckpoint.start(out_dir / "best", cfg.train.patience, start > 0) if cfg.train.keep_best else None
    last_step = start
    for step in bar:
        batch, ctx = local_batch(data, feats, step, cfg, rank, world, device, bank)
        counter = FlopCounterMode(display=False) if step - start < FLOP_STEPS and not sharded else contextlib.nullcontext()
        with counter:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                out = model(batch, modes=needed_modes(cfg.loss))
                if feats.title_states is not None:
                    out["board_text"], out["board_mask"] = board_title_embeddings(model, feats.title_states,
                                                                                  ctx.boards, device)
            out = {k: v.float() if v.is_floating_point() else v for k, v in out.items()}
            terms = objective(model, out, ctx, cfg.loss, cfg.model.dims, bank)
            optimizer.zero_grad(set_to_none=True)
            terms["loss"].backward()
        if isinstance(counter, FlopCounterMode):
            step_flops.append(counter.get_total_flops() * world)
        if not sharded:  # FSDP has reduce-scattered the mean gradient already
            _average_gradients(model)
        grad_norm = parallel.as_float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip))
        optimizer.step()
        scheduler.step()
        if bank is not None:
            _push_bank(bank, out, ctx)
        pins_seen += cfg.train.batch_size
        record = {"step": step + 1, "lr": scheduler.get_last_lr()[0], "grad_norm": float(grad_norm),
                  **{k: _mean_over_ranks(v) for k, v in terms.items()}, **_scalars(model),
                  "pins_per_s": pins_seen / (time.perf_counter() - t0)}
        bar.set_postfix(loss=f"{record['loss']:.3f}", pins_s=f"{record['pins_per_s']:.0f}")
        if (rank == 0 or sharded) and ((step + 1) % cfg.train.eval_every == 0 or step + 1 == cfg.train.steps):
            record.update(validate(model, data, feats, cfg, device))
        log.write(record)
        last_step = step + 1
        if (step + 1) % cfg.train.checkpoint_every == 0 and step + 1 < cfg.train.steps:
            _save_last(out_dir, model, cfg, step + 1, optimizer, scheduler, rank, bank)
        if keeper is not None and _keep_best(keeper, record, model, cfg, step + 1, rank, sharded, out_dir):
            break
    final = out_dir / "final"
    chosen = keeper.summary(last_step, cfg.train.steps) if keeper is not None else {}
    if chosen and chosen["chosen_step"] != last_step and not sharded:  # a sharded model keeps its last weights
        _load_weights(model, out_dir / "best", device)
    elif chosen:
        chosen["chosen_step"] = last_step
    if rank == 0 or sharded:
        meta = {"quant": calibrate_quant(model, data, feats, device), "train_pins": int(len(data.train_rows)),
                "seconds": time.perf_counter() - t0, **setup_s, **chosen}
        if step_flops:  # forward + backward FLOPs of the first steps (all ranks), times the steps run
            meta["train_flops"] = float(np.mean(step_flops) * last_step)
        weights = parallel.full_weights(model) if sharded else None
    if rank == 0:
        version = save_checkpoint(final, model, cfg, chosen.get("chosen_step", cfg.train.steps), meta=meta,
                                  weights=weights)
        log.write({"step": last_step, "final": str(final), "version": version, **chosen})
    if dist.is_initialized():
        dist.barrier()
    return final


def _keep_best(keeper: BestCheckpoint, record: dict, model, cfg: Config, step: int, rank: int, sharded: bool,
               out_dir: Path) -> bool:
    """Save best/ when this step's validation is the best so far; True (on every rank) when training should stop."""
    if step % cfg.train.eval_every and step != cfg.train.steps:
        return False  # not a validation step (the same on every rank)
    stop = False
    if "val_recall@10" in record:
        def save() -> None:
            weights = parallel.full_weights(model) if sharded else None
            if rank == 0:
                save_checkpoint(out_dir / "best", model, cfg, step, weights=weights,
                                meta={"best_val_recall@10": record["val_recall@10"]})

        stop = keeper.observe(record["val_recall@10"], step, save)
    if dist.is_initialized():  # rank 0 validated (or every rank, sharded): its decision holds for all
        flag = torch.tensor([float(stop)], device=next(model.parameters()).device)
        dist.broadcast(flag, src=0)
        stop = bool(flag.item())
    return stop


def _load_weights(model: PinCLIP, folder: Path, device: torch.device) -> None:
    from safetensors.torch import load_file

    model.load_state_dict(load_file(str(folder / "model.safetensors"), device=str(device)), strict=False)


def cpu_has_bf16() -> bool:
    """True on CPUs with native bf16 matrix instructions (AVX512-BF16 or AMX), where autocast pays off."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def use_bf16(precision: str, device: torch.device) -> bool:
    """bf16 autocast: asked for, or "auto" on a GPU or on a CPU with native bf16 instructions."""
    if precision not in ("auto", "fp32", "bf16"):
        raise ValueError(f"train.precision must be auto, fp32 or bf16, got {precision!r}")
    if precision != "auto":
        return precision == "bf16"
    return device.type == "cuda" or (device.type == "cpu" and cpu_has_bf16())


def needed_modes(loss) -> tuple[str, ...]:
    """The embedding modes the loss terms use (a two-tower recipe needs no fused pass)."""
    modes = []
    if loss.image_text_weight > 0 or loss.image_neighbor_weight > 0:
        modes += ["image", "text"]
    if loss.neighbor_weight > 0 or loss.board_weight > 0 or (loss.image_text_weight > 0 and loss.pin_text_weight > 0):
        modes.append("pin")
    if "pin" in modes and "text" not in modes:
        modes.append("text")  # the text mask is read by the objective
    return tuple(modes)


def _broadcast_parameters(model: torch.nn.Module) -> None:
    """Every rank starts from rank 0's trained weights."""
    if dist.is_initialized():
        for p in model.parameters():
            if p.requires_grad:
                dist.broadcast(p.data, src=0)


def _average_gradients(model: torch.nn.Module) -> None:
    """Mean of the ranks' gradients (what DDP does), as one flat all-reduce.

    Each rank's loss covers its rows against the global batch (negatives gathered with gradient),
    so the mean over ranks of the gradients is the gradient of the global-batch loss.
    """
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return
    params = [p for p in model.parameters() if p.requires_grad]
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for p, g in zip(params, grads):
        p.grad = flat[offset : offset + g.numel()].view_as(g).clone()
        offset += g.numel()


def _mean_over_ranks(value: torch.Tensor) -> float:
    v = value.detach().float().clone()
    if dist.is_initialized():
        dist.all_reduce(v)
        v /= dist.get_world_size()
    return float(v)


def _scalars(model: PinCLIP) -> dict[str, float]:
    """The contrastive temperatures (as multipliers) and biases, for the training log."""
    value = parallel.as_float  # a sharded model's scalars are DTensors (every rank calls this)
    with torch.no_grad():
        return {"it_scale": value(model.it_logit_scale.exp()), "it_bias": value(model.it_logit_bias),
                "nb_scale": value(model.nb_logit_scale.exp())}


def _push_bank(bank: EmbeddingMemory, out: dict[str, torch.Tensor], ctx: BatchContext) -> None:
    """Every rank pushes the gathered anchor and partner embeddings of this step (the same on all ranks)."""
    pins = all_gather_no_grad(out["pin"].detach())  # (N, D)
    _, world = rank_and_world()
    order = torch.argsort(ctx.canonical)  # anchors, then partners, then hard rows, whatever the world size
    order = order[: 2 * ctx.anchors * world]  # hard rows are not pushed (they are not sampled uniformly)
    bank.push(pins[order], ctx.rows[order], ctx.log_q[order])


def _save_last(out_dir: Path, model, cfg, step, optimizer, scheduler, rank, bank=None) -> None:
    if cfg.train.parallel == "fsdp":  # Distributed Checkpoint: every rank writes its shards
        parallel.save_train_state(out_dir / "last", model, optimizer, scheduler, step,
                                  yaml.safe_dump(config_to_dict(cfg), sort_keys=False),
                                  {"bank": bank.state_dict() if bank is not None else None})
        return
    if rank != 0:
        if dist.is_initialized():
            dist.barrier()
        return
    state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "step": step,
             "torch_rng": torch.get_rng_state(), "bank": bank.state_dict() if bank is not None else None}
    save_checkpoint(out_dir / "last", model, cfg, step, trainer_state=state)
    if dist.is_initialized():
        dist.barrier()


def _maybe_resume(path: Path, model, optimizer, scheduler, device, bank=None) -> int:
    if parallel.has_train_state(path):  # written by FSDP at any world size
        state = parallel.load_train_state(path, model, optimizer, scheduler)
        if bank is not None and state.get("bank") is not None:
            bank.load_state_dict(state["bank"])
        return int(state["step"])
    if not (path / "trainer.pt").is_file():
        return 0
    from safetensors.torch import load_file

    model.load_state_dict(load_file(str(path / "model.safetensors"), device=str(device)), strict=False)
    state = torch.load(path / "trainer.pt", map_location=device, weights_only=False)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    if bank is not None and state.get("bank") is not None:
        bank.load_state_dict(state["bank"])
    return int(state["step"])


class _Log:
    """metrics.jsonl, trimmed to the resumed step so a resumed run's log reads as one run."""

    def __init__(self, path: Path, start: int, enabled: bool) -> None:
        self.path, self.enabled = path, enabled
        if enabled and path.exists():
            kept = [line for line in path.read_text().splitlines()
                    if line and json.loads(line).get("step", 0) <= start and "final" not in line]
            path.write_text("".join(line + "\n" for line in kept))
        self.tb = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(path.parent / "tb"))
            except ImportError:
                self.tb = None

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k != "step":
                    self.tb.add_scalar(k, v, record.get("step", 0))
