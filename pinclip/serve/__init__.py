"""Serving (README.md, "Serving"): the batch embedding job, the index backends, and the HTTP API.

    embed.py           pins table -> int8 parquet shards + manifest.json (reader -> mapper -> writer, resumable)
    ray_backend.py     the same job on a Ray Data actor pool
    index.py           PinIndex: FAISS SQ flat / HNSW / IVF over the codes, pin_id sidecar, put / delete
    ann_tuning.py      efSearch / nprobe tuned against exact search
    backend.py         the index-backend interface and open_backend
    faiss_backend.py   the durable FAISS index folder: snapshots + write log (wal.py) + lock, compaction
    milvus_backend.py  the same interface on Milvus (Lite file or cluster) through MilvusClient
    service.py         what the endpoints do (micro-batched embedding via batcher.py, bounded image decodes)
    app.py, routes.py, openai_api.py   the FastAPI app, its own routes, the OpenAI /v1 routes; static/ the page
    *_cli.py           `pinclip embed`, `pinclip index build|add|compact`, `pinclip serve`
"""
