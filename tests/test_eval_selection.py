"""pinclip.eval.selection: the selection score on hand-made evaluation documents."""

from __future__ import annotations

import json

import pytest

from pinclip.eval.selection import record_selection, selection_line, selection_score


def cell(ndcg: float) -> dict:
    return {"ndcg@10": ndcg, "queries": 30}


def document(partition: str = "val") -> dict:
    """pinclip: related warm 0.4 / cold 0.2 (full), related cold image 0.1, search warm 0.6, pintext_i2t warm 0.9
    (training fit) and cold 0.3; bm25 cannot score PinText."""
    pinclip = {"pintext_i2t": {"warm": {"full": cell(0.9)}, "cold": {"full": cell(0.3)}},
               "related": {"warm": {"full": cell(0.4)}, "cold": {"full": cell(0.2), "image": cell(0.1)}},
               "search": {"warm": {"full": cell(0.6)}}}
    bm25 = {"pintext_i2t": {"warm": {"full": None}, "cold": {"full": None}},
            "related": {"warm": {"full": cell(0.5)}, "cold": {"full": cell(0.3), "image": None}},
            "search": {"warm": {"full": cell(0.7)}}}
    return {"partition": partition, "models": {"bm25": bm25, "pinclip": pinclip}}


def test_the_score_is_the_mean_over_cold_cells_and_warm_related_and_search_never_warm_pintext():
    s = selection_score(document())
    assert s["model"] == "pinclip" and s["metric"] == "ndcg@10" and s["missing"] == []
    assert s["cells"] == ["pintext_i2t/cold/full", "related/warm/full", "related/cold/full", "related/cold/image",
                          "search/warm/full"]
    assert s["score"] == pytest.approx((0.3 + 0.4 + 0.2 + 0.1 + 0.6) / 5)  # 0.32; the warm PinText 0.9 is left out


def test_a_model_that_cannot_score_a_cell_lists_it_as_missing():
    s = selection_score(document(), model="bm25")
    assert s["missing"] == ["pintext_i2t/cold/full", "related/cold/image"]
    assert s["score"] == pytest.approx((0.5 + 0.3 + 0.7) / 3)


def test_domain_shift_validation_cells_join_the_mean_and_a_test_document_is_refused():
    domain = {"partition": "val", "models": {"pinclip": {"related": {"cold": {"full": cell(0.05)}}},
                                             "frozen": {"related": {"cold": {"full": cell(0.5)}}}}}
    s = selection_score(document(), domain)
    assert s["cells"][-1] == "domain/related/cold/full" and s["domain"]
    assert s["score"] == pytest.approx((0.3 + 0.4 + 0.2 + 0.1 + 0.6 + 0.05) / 6)
    assert selection_score(document(), domain, model="bm25")["missing"][-1] == "domain/related/cold/full"
    with pytest.raises(ValueError, match="validation partition"):
        selection_score(document(), {**domain, "partition": "test"})


def test_a_cell_with_fewer_than_20_queries_is_left_out_and_listed():
    domain = {"partition": "val", "models": {"pinclip": {
        "related": {"cold": {"full": {"ndcg@10": 0.05, "queries": 78}}},
        "search": {"cold": {"full": {"ndcg@10": 0.9, "queries": 5}, "title": {"ndcg@10": 0.8, "queries": 20}}}}}}
    s = selection_score(document(), domain)
    assert s["too_few"] == ["domain/search/cold/full"]
    assert s["cells"][-2:] == ["domain/related/cold/full", "domain/search/cold/title"]
    assert s["score"] == pytest.approx((0.3 + 0.4 + 0.2 + 0.1 + 0.6 + 0.05 + 0.8) / 7)  # the 5-query 0.9 is out
    assert "1 cells left out with fewer than 20 queries" in selection_line(s)
    small = {"partition": "val", "models": {"pinclip": {"search": {"cold": {"full": {"ndcg@10": 0.9, "queries": 5}}}}}}
    assert selection_score(small)["score"] == 0.9 and not selection_score(small)["too_few"]  # no cell has 20: all count


def test_the_printed_line_warns_on_a_test_document():
    assert "for the record only" in selection_line(selection_score(document("test")))
    line = selection_line(selection_score(document()))
    assert line.startswith("selection score (pinclip): 0.3200 = mean ndcg@10 over 5 cells") and "record" not in line


def test_record_selection_rewrites_metrics_json_for_every_model(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps(document()))
    domain = tmp_path / "domain.json"
    domain.write_text(json.dumps({"partition": "val", "models": {"pinclip": {"search": {"cold": {"full": cell(0.2)}}}}}))
    best = record_selection(path, domain)
    saved = json.loads(path.read_text())
    assert best["score"] == pytest.approx((0.3 + 0.4 + 0.2 + 0.1 + 0.6 + 0.2) / 6)
    assert set(saved["selection"]) == {"bm25", "pinclip"} and saved["selection"]["pinclip"] == best
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left
