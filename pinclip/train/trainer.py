"""The trainer: one code path for 1 or N processes (torchrun; gloo on CPU, nccl on GPU).

    pinclip train --config configs/demo.yaml                         # one process
    torchrun --nproc_per_node 2 -m pinclip train --config configs/tiny.yaml   # two ranks, same global batch

Each step takes the global batch of that step (a pure function of seed and step), and rank r
embeds its slice; contrastive negatives are gathered across ranks, so the loss curve matches one
process with the same global batch. The model stays in eval mode (no dropout, frozen batch-norm
statistics) so runs are deterministic. Checkpoints hold everything needed for an exact resume.
"""

from __future__ import annotations

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
from tqdm import tqdm

from pinclip.config import Config, config_to_dict
from pinclip.eval.metrics import retrieval_metrics
from pinclip.models.build import build_model, is_vlm
from pinclip.models.embedder import embed_rows
from pinclip.models.features import image_features
from pinclip.models.pinclip import PinCLIP
from pinclip.models.text_states import TextStates, compute_text_states, field_strings, text_batch
from pinclip.quant import fit_global_affine
from pinclip.train import parallel
from pinclip.train.checkpoint import save_checkpoint
from pinclip.train.dataset import TrainingData, batch_at, load_dataset_dir, prepare_training
from pinclip.train.objective import objective


@dataclass
class Features:
    vis: np.ndarray  # (P, T, C) float16 visual tokens of every pin
    has_image: np.ndarray  # (P,) bool
    states: TextStates

    @property
    def has_text(self) -> np.ndarray:
        return self.states.length.sum(1) > 0

    def batch(self, rows: np.ndarray, device: torch.device) -> dict[str, torch.Tensor]:
        batch = text_batch(self.states, rows)
        batch["vis"] = torch.from_numpy(self.vis[rows].astype(np.float32))
        batch["has_image"] = torch.from_numpy(self.has_image[rows])
        return {k: v.to(device, non_blocking=True) for k, v in batch.items()}

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


def compute_features(model: PinCLIP, data: TrainingData, cache_dir: str, rank: int, progress: bool) -> Features:
    """Image features and text states of every pin; rank 0 fills the caches, the others read them.
    A VLM's inputs instead: its images scanned and, with a frozen vision side, its vision cache filled."""
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
        if dist.is_initialized():
            dist.barrier()
    return Features(vis, ok, states)


def build_optimizer(model: PinCLIP, cfg: Config) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    groups: dict[tuple[float, float], list[torch.nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        lr = cfg.train.backbone_lr if name.startswith(("backbone.", "vision.")) else cfg.train.lr
        decay = 0.0 if p.ndim < 2 or "logit" in name else cfg.train.weight_decay
        groups.setdefault((lr, decay), []).append(p)
    optimizer = torch.optim.AdamW([{"params": ps, "lr": lr, "weight_decay": wd} for (lr, wd), ps in groups.items()],
                                  betas=(0.9, 0.98), eps=1e-6)
    warmup, total = max(cfg.train.warmup_steps, 1), max(cfg.train.steps, 1)

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(total - warmup, 1))))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


def local_batch(data: TrainingData, feats: Features, step: int, cfg: Config, rank: int, world: int,
                device: torch.device) -> tuple[dict[str, torch.Tensor], int, torch.Tensor, torch.Tensor]:
    """This rank's slice of the global batch: [local anchors; local partners] and the masks."""
    gb = batch_at(data, step, cfg.train.batch_size, cfg.train.seed)
    half = len(gb.rows) // 2
    if half % world:
        raise ValueError(f"batch_size/2 = {half} is not divisible by the world size {world}")
    per = half // world
    lo, hi = rank * per, (rank + 1) * per
    rows = np.concatenate([gb.rows[lo:hi], gb.rows[half + lo : half + hi]])
    batch = feats.batch(rows, device)
    share = torch.from_numpy(gb.share_board[lo:hi]).to(device)  # (A_local, A_global)
    return batch, per, share, torch.from_numpy(gb.has_neighbor).to(device)


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
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    dataset = load_dataset_dir(cfg.train.data_dir)
    data = prepare_training(dataset, cfg.graph, cfg.train.seed, cfg.train.train_fraction, progress and rank == 0)
    model = build_model(cfg.model).to(device).eval()
    features_started = time.perf_counter()
    feats = compute_features(model, data, cfg.train.cache_dir, rank, progress)
    setup_s = {"prepare_seconds": features_started - started, "features_seconds": time.perf_counter() - features_started}
    bf16 = cfg.train.precision == "bf16" or (cfg.train.precision == "auto" and device.type == "cuda")
    if cfg.train.parallel == "fsdp" and world > 1:
        model = parallel.shard_model(model, bf16=bf16)
    sharded = parallel.is_sharded(model)  # every rank then runs every forward (validation too)
    optimizer, scheduler = build_optimizer(model, cfg)
    start = _maybe_resume(out_dir / "last", model, optimizer, scheduler, device) if resume else 0
    if not sharded:
        _broadcast_parameters(model)
    log = _Log(out_dir / "metrics.jsonl", start, enabled=rank == 0)
    if (rank == 0 or sharded) and start == 0:
        log.write({"step": 0, **validate(model, data, feats, cfg, device)})
    bar = tqdm(range(start, cfg.train.steps), desc="train", unit="step", disable=not progress or rank != 0, initial=start, total=cfg.train.steps)
    t0, pins_seen = time.perf_counter(), 0
    for step in bar:
        batch, anchors, share, has_nb = local_batch(data, feats, step, cfg, rank, world, device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            out = model(batch, modes=needed_modes(cfg.loss))
        out = {k: v.float() if v.is_floating_point() else v for k, v in out.items()}
        terms = objective(model, out, anchors, share, has_nb, cfg.loss, cfg.model.dims)
        optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        if not sharded:  # FSDP has reduce-scattered the mean gradient already
            _average_gradients(model)
        grad_norm = parallel.as_float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip))
        optimizer.step()
        scheduler.step()
        pins_seen += cfg.train.batch_size
        record = {"step": step + 1, "lr": scheduler.get_last_lr()[0], "grad_norm": float(grad_norm),
                  **{k: _mean_over_ranks(v) for k, v in terms.items()},
                  "pins_per_s": pins_seen / (time.perf_counter() - t0)}
        bar.set_postfix(loss=f"{record['loss']:.3f}", pins_s=f"{record['pins_per_s']:.0f}")
        if (rank == 0 or sharded) and ((step + 1) % cfg.train.eval_every == 0 or step + 1 == cfg.train.steps):
            record.update(validate(model, data, feats, cfg, device))
        log.write(record)
        if (step + 1) % cfg.train.checkpoint_every == 0 and step + 1 < cfg.train.steps:
            _save_last(out_dir, model, cfg, step + 1, optimizer, scheduler, rank)
    final = out_dir / "final"
    if rank == 0 or sharded:
        meta = {"quant": calibrate_quant(model, data, feats, device), "train_pins": int(len(data.train_rows)),
                "seconds": time.perf_counter() - t0, **setup_s}
        weights = parallel.full_weights(model) if sharded else None
    if rank == 0:
        version = save_checkpoint(final, model, cfg, cfg.train.steps, meta=meta, weights=weights)
        log.write({"step": cfg.train.steps, "final": str(final), "version": version})
    if dist.is_initialized():
        dist.barrier()
    return final


def needed_modes(loss) -> tuple[str, ...]:
    """The embedding modes the loss terms use (a two-tower recipe needs no fused pass)."""
    modes = []
    if loss.image_text_weight > 0:
        modes += ["image", "text"]
    if loss.neighbor_weight > 0 or (loss.image_text_weight > 0 and loss.pin_text_weight > 0):
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


def _save_last(out_dir: Path, model, cfg, step, optimizer, scheduler, rank) -> None:
    if cfg.train.parallel == "fsdp":  # Distributed Checkpoint: every rank writes its shards
        parallel.save_train_state(out_dir / "last", model, optimizer, scheduler, step,
                                  yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
        return
    if rank != 0:
        if dist.is_initialized():
            dist.barrier()
        return
    state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "step": step,
             "torch_rng": torch.get_rng_state()}
    save_checkpoint(out_dir / "last", model, cfg, step, trainer_state=state)
    if dist.is_initialized():
        dist.barrier()


def _maybe_resume(path: Path, model, optimizer, scheduler, device) -> int:
    if parallel.has_train_state(path):  # written by FSDP at any world size
        return parallel.load_train_state(path, model, optimizer, scheduler, device)
    if not (path / "trainer.pt").is_file():
        return 0
    from safetensors.torch import load_file

    model.load_state_dict(load_file(str(path / "model.safetensors"), device=str(device)), strict=False)
    state = torch.load(path / "trainer.pt", map_location=device, weights_only=False)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
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
