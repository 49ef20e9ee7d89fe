"""pinclip.eval.protocol: the types both the encoders and the baselines depend on."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np

import pinclip
from pinclip.eval import encoders, protocol


def test_unit_scales_rows_to_norm_one_and_leaves_zero_rows_zero():
    out = protocol.unit(np.array([[3.0, 4.0], [0.0, 0.0]]))
    assert np.allclose(out, [[0.6, 0.8], [0.0, 0.0]])


def test_encoders_re_exports_the_protocol_types():
    assert encoders.TaskVectors is protocol.TaskVectors and encoders.unit is protocol.unit
    assert encoders.Encoder is protocol.Encoder and encoders.Ranker is protocol.Ranker


def test_no_baseline_imports_the_encoders_module():
    """The baselines and pinclip.eval.encoders used to import each other; now both import the protocol."""
    for path in (Path(pinclip.__file__).parent / "baselines").glob("*.py"):
        tree = ast.parse(path.read_text())
        imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert "pinclip.eval.encoders" not in imported, path.name
