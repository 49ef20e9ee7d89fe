"""Serving (DESIGN.md §6): the batch embedding job, the FAISS index of int8 codes, and the HTTP API.

    embed.py        pins table -> int8 parquet shards + manifest.json (reader -> mapper -> writer, resumable)
    ray_backend.py  the same job on a Ray Data actor pool
    index.py        PinIndex: FAISS SQ flat / HNSW / IVF over the codes, pin_id sidecar, incremental adds
    app.py          FastAPI app (create_app) and the search page under static/
    *_cli.py        `pinclip embed`, `pinclip index build|add`, `pinclip serve`
"""
