"""scripts/gpu_check.sh: what can be checked without a GPU (the refusal, FLOP accounting, a CPU run)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pinclip.train.gpu_check import main, peak_tflops, training_flops

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_the_script_refuses_clearly_without_cuda():
    result = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--random", "qwen2_5_vl"],
                            env={**os.environ, "PY": sys.executable}, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "needs a CUDA device" in result.stderr and "Traceback" not in result.stderr


def test_flop_accounting_and_peaks():
    # one row of 10 tokens, N=100, 5 trained, 2 layers of width 4: 10 * (4*100 + 2*5 + 12*2*4*10)
    assert training_flops([(10, 10)], params=100, trained=5, layers=2, width=4) == 10 * (400 + 10 + 960)
    # full fine-tuning is PaLM's 6N + 12·L·d·T per token
    assert training_flops([(1, 7)], params=50, trained=50, layers=3, width=2) == 6 * 50 + 12 * 3 * 2 * 7
    assert peak_tflops("NVIDIA H200") == 989.0 and peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert peak_tflops("Mystery Accelerator") is None


def test_the_check_runs_end_to_end_on_cpu(tmp_path):
    out = tmp_path / "gpu.json"
    assert main(["--random", "qwen2_5_vl", "--tiny", "--device", "cpu", "--steps", "1", "--batch", "4",
                 "--embed-pins", "2", "--image-size", "56", "--peak-tflops", "1", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["train_steps_per_s"] > 0 and result["embed_pins_per_s"] > 0 and result["train_tflops_per_s"] > 0
    assert 0 < result["trained_params"] < result["decoder_params"]  # LoRA: adapters only
    assert result["mfu"] == pytest.approx(result["train_tflops_per_s"])
