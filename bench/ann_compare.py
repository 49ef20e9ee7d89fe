"""The ANN part of the search benchmark: the served IVF-SQ8 index beside HNSW peers on out-of-distribution
and in-distribution queries (recall–parameter curves, QPS and memory at R@10 >= 0.95), the demo's
cross-modal curve, and how each data set sits (bench.ann_data.embedding_stats).

Used by bench/search_scale.py: `measure_ann` gathers the figures, `ann_report` turns them into
targets, tables and notes.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from bench.ann_peers import (
    Contender,
    hnswlib_contender,
    operating_point,
    recall_of,
    served_contender,
    set_faiss_threads,
    single_query_qps,
    sweep,
    usearch_contender,
)
from bench.common import MIN_ROUNDS, Target, fmt, fmt_ratio, interleaved_times, median, ratio_stats

RECALL = 0.95
QUERY_SETS = {"ood": "text-like queries (out of distribution)", "in": "held-out pins (in distribution)"}


def evaluate(c: Contender, sets: dict[str, tuple[np.ndarray, np.ndarray]], threads: int, single: int) -> dict:
    """Curves on every query set, the out-of-distribution operating point and its single-query QPS."""
    curves = {name: sweep(c, queries, truth, threads) for name, (queries, truth) in sets.items()}
    out = {"name": c.name, "param": c.param, "n": c.n, "index_bytes": c.index_bytes,
           "bytes_per_vector": c.index_bytes / c.n, "build_s": c.build_s, "build_rss_mb": c.build_rss_mb,
           "curves": curves, "op": operating_point(curves["ood"], RECALL)}
    if out["op"] is not None:
        c.set_param(out["op"]["param"])
        out["single_qps"] = single_query_qps(c, sets["ood"][0][:single])
    return out


def measure_ann(index: Any, build_s: float, build_rss_mb: float, codes: np.ndarray, vectors: np.ndarray,
                sets: dict[str, tuple[np.ndarray, np.ndarray]], truth_on: Any, threads: int,
                budgets: dict[str, float], chunk: int, single: int) -> dict[str, Any]:
    """Figures of the served index and its peers. truth_on(n, queries) -> exact ids (Q, 10) over rows
    [0, n), for a peer whose build stopped early; budgets: build seconds per peer ("usearch", "hnswlib"),
    checked after each `chunk` rows added; single: queries timed one at a time."""
    served = served_contender(index, build_s, build_rss_mb)
    tuned = int(index.meta.params["nprobe"])
    figures: dict[str, Any] = {"threads": threads, "nprobe_tuned": tuned, "nlist": int(index.faiss_index.nlist)}
    served.set_param(tuned)
    figures["served_as_tuned"] = {name: recall_of(served, q, t, threads) for name, (q, t) in sets.items()}
    peers, figures["missing_peers"] = [], []
    for name, build, data in (("usearch", usearch_contender, codes), ("hnswlib", hnswlib_contender, vectors)):
        try:
            peers.append(build(data, threads, budgets[name], chunk))
        except ImportError:  # the bench extra not installed: the comparison goes on without this peer
            figures["missing_peers"].append(name)
    results = {"served": evaluate(served, sets, threads, single)}
    for peer in peers:
        peer_sets = sets if peer.n == len(codes) else {k: (q, truth_on(peer.n, q)) for k, (q, _) in sets.items()}
        results[peer.name] = evaluate(peer, peer_sets, threads, single)
    figures["contenders"] = results
    calls = {name: (c, results[name]["op"]["param"]) for name, c in zip(results, [served, *peers])
             if results[name]["op"] is not None}
    figures.update(time_operating_points(calls, sets["ood"][0], threads))
    served.set_param(tuned)  # as served: one timed call (at a large nprobe it is the slowest by far)
    start = time.perf_counter()
    served.search(sets["ood"][0], threads)
    figures["batch_qps"]["served@tuned"] = len(sets["ood"][0]) / (time.perf_counter() - start)
    set_faiss_threads(threads)  # single-query timing left FAISS on one thread
    return figures


def time_operating_points(calls: dict[str, tuple[Contender, int]], queries: np.ndarray, threads: int) -> dict:
    """Batch QPS of each (contender, parameter) over interleaved rounds, and the served index's QPS
    over the fastest peer's (peer seconds / served seconds, per round)."""
    def call(c: Contender, value: int) -> Any:
        return lambda: (c.set_param(value), c.search(queries, threads))

    times = interleaved_times({name: call(c, v) for name, (c, v) in calls.items()}, MIN_ROUNDS)
    qps = {name: len(queries) / median(t) for name, t in times.items()}
    out: dict[str, Any] = {"batch_qps": qps, "rounds": MIN_ROUNDS}
    peers = [n for n in qps if n != "served"]
    if peers and "served" in qps:
        best = max(peers, key=qps.get)
        out.update(best_peer=best, qps_ratio=ratio_stats(times, best, "served"))
    return out


def curve_text(curve: list[dict[str, float]]) -> str:
    """'1: 0.78, 2: 0.88, ...' (parameter: recall)."""
    return ", ".join(f"{p['param']}: {p['recall']:.3f}" for p in curve)


def ann_targets(f: dict, demo: dict) -> list[Target]:
    """Targets of the ANN comparison (out-of-distribution recall, QPS and memory beside the best peer, demo)."""
    a, served = f["ann"], f["ann"]["contenders"]["served"]
    as_tuned = a["served_as_tuned"]["ood"]
    targets = [Target(f"R@10 of the served IVF-SQ8 as tuned (nprobe={a['nprobe_tuned']}), {QUERY_SETS['ood']}",
                      f">= {RECALL}", f"{as_tuned:.3f}", as_tuned >= RECALL)]
    best = a.get("best_peer")
    if best is None or served["op"] is None:
        missing = "the served index" if served["op"] is None else "no peer"
        targets.append(Target(f"batch QPS at R@10 >= {RECALL}, served / best peer", ">= 1x",
                              f"{missing} reached R@10 {RECALL}", False))
    else:
        peer, ratio = a["contenders"][best], a["qps_ratio"]
        subset = "" if peer["n"] == served["n"] else f"; peer on {peer['n']:,} of {served['n']:,} vectors"
        targets.append(Target(
            f"batch QPS at R@10 >= {RECALL} (nprobe={served['op']['param']} vs {best} "
            f"{peer['param']}={peer['op']['param']}), served / best peer, {a['threads']} threads", ">= 1x",
            f"{fmt_ratio(ratio)}: {a['batch_qps']['served']:,.0f} vs {a['batch_qps'][best]:,.0f} q/s{subset}",
            ratio["median"] >= 1.0))
        mem = served["bytes_per_vector"] / peer["bytes_per_vector"]
        targets.append(Target(f"index bytes per vector, served / {best}", "<= 1x",
                              f"{mem:.2f}x ({served['bytes_per_vector']:.0f} vs {peer['bytes_per_vector']:.0f} B)",
                              mem <= 1.0))
    if "skipped" in demo:
        targets.append(Target("demo: R@10 of text queries against pins, IVF as built", f">= {RECALL}",
                              f"not measured ({demo['skipped']})", None))
    else:
        targets.append(Target(f"demo: R@10 of text queries against pins, IVF as built (nprobe={demo['params']['nprobe']})",
                              f">= {RECALL}", f"{demo['recall_as_built']:.3f}", demo["recall_as_built"] >= RECALL))
    return targets


def ann_table(f: dict) -> list[dict[str, Any]]:
    """One row per contender at its smallest parameter reaching R@10 >= 0.95 (out of distribution),
    plus the served index as tuned."""
    a, rows = f["ann"], []
    for key, c in a["contenders"].items():
        op = c["op"]
        rows.append({
            "index": f"{c['name']} ({c['param']}={op['param'] if op else 'none reaches ' + str(RECALL)})",
            "N": f"{c['n']:,}", "R@10 ood": fmt(op["recall"]) if op else "", "R@10 in": "",
            f"batch QPS ({a['threads']} thr)": f"{a['batch_qps'].get(key, float('nan')):,.0f}" if op else "",
            "1-query QPS (1 thr)": f"{c['single_qps']:,.0f}" if op else "",
            "index MiB": fmt(c["index_bytes"] / 2**20), "B / vector": fmt(c["bytes_per_vector"]),
            "build (s)": fmt(c["build_s"]),
        })
        if op:
            in_curve = {p["param"]: p["recall"] for p in c["curves"]["in"]}
            rows[-1]["R@10 in"] = fmt(in_curve[op["param"]]) if op["param"] in in_curve else ">= " + fmt(
                max(in_curve.values()))
    s = a["contenders"]["served"]
    rows.insert(1, {"index": f"served IVF-SQ8 as tuned (nprobe={a['nprobe_tuned']})", "N": f"{s['n']:,}",
                    "R@10 ood": fmt(a["served_as_tuned"]["ood"]), "R@10 in": fmt(a["served_as_tuned"]["in"]),
                    f"batch QPS ({a['threads']} thr)": f"{a['batch_qps']['served@tuned']:,.0f}",
                    "index MiB": fmt(s["index_bytes"] / 2**20), "B / vector": fmt(s["bytes_per_vector"]),
                    "build (s)": fmt(s["build_s"])})
    return rows


def stats_rows(stats: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    """The embedding_stats of each data set, one row each."""
    names = {"mean_norm_base": "mean-pin norm", "mean_norm_query": "mean-query norm", "mean_cos": "cos(means)",
             "base_pair_cos": "pin-pin cos", "effective_dim": "effective dim", "top1": "top-1 score",
             "top10": "top-10 score", "contrast": "top-10 contrast"}
    return [{"data": label, **{names[k]: fmt(v) for k, v in s.items()}} for label, s in stats.items()]
