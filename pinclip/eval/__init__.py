"""Evaluation: task construction from the data and splits, retrieval metrics, and the harness."""
