"""PinCLIP benchmarks against peer tools: `python bench/run.py --out bench` (see run.py)."""
