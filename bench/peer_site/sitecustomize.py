"""Imported at start-up by the Infinity servers of bench/serve_load.py (PYTHONPATH=bench/peer_site):
every ONNX Runtime session gets ORT_INTRA_OP_THREADS intra-op threads and one inter-op thread.

ONNX Runtime's default pool has one thread per physical core and sets each thread's affinity to its
core, which takes the server off the one core `taskset` gives it; infinity-emb has no option for
the thread count. PinCLIP's sessions use torch's thread count, 1 under OMP_NUM_THREADS=1.
"""

import os

if "ORT_INTRA_OP_THREADS" in os.environ:
    import onnxruntime

    class SessionWithThreads(onnxruntime.InferenceSession):
        def __init__(self, path_or_bytes, sess_options=None, *args, **kwargs) -> None:
            options = sess_options or onnxruntime.SessionOptions()
            options.intra_op_num_threads = int(os.environ["ORT_INTRA_OP_THREADS"])
            options.inter_op_num_threads = 1
            super().__init__(path_or_bytes, options, *args, **kwargs)

    onnxruntime.InferenceSession = SessionWithThreads
