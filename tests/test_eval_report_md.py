"""report.md's wording: the lexical footnote only where a cell is flagged, and what "n.s." means."""

from __future__ import annotations

from pinclip.eval.report_md import PROTOCOL, headline_section


def _doc(lexical: dict) -> dict:
    cell = {"queries": 12, "corpus": 100, "ndcg@10": 0.5, "ndcg@10_ci": [0.4, 0.6]}
    diff = {"ndcg@10": {"diff": 0.2, "low": 0.1, "high": 0.3, "significant": False, "queries": 12}}
    return {"primary": "ndcg@10", "models": {"pinclip": {"search": {"warm": {"full": cell}}},
                                             "bm25": {"search": {"warm": {"full": {**cell, "ndcg@10": 0.3}}}}},
            "comparisons": {"bm25": {"search": {"warm": {"full": diff}}}}, "lexical": lexical}


def test_any_flag_reads_the_leaves():
    from pinclip.eval.report_md import any_flag

    assert not any_flag({"search": {"warm": {"full": False}}, "related": {"cold": {"title": False}}})
    assert any_flag({"search": {"warm": {"full": False, "title": True}}}) and not any_flag({})


def test_the_lexical_footnote_needs_a_flagged_cell():
    unflagged = {"search": {"warm": {"full": False}}, "related": {"cold": {"title": False}}}
    text = "\n".join(headline_section(_doc(unflagged)))
    assert "lexical" not in text
    flagged = "\n".join(headline_section(_doc({"search": {"warm": {"full": True}}})))
    assert "bm25 (lexical)" in flagged and "(lexical): BM25 matches or beats every learned model" in flagged


def test_ns_is_defined_with_the_query_minimum():
    text = " ".join(PROTOCOL.format(cold="cold-start pins", boards="test", min_queries=20).split())
    assert "(adjusted bootstrap p of 0.05 or more), or the cell has fewer than 20 queries" in text
    assert "+0.200 [+0.100, +0.300] n.s." in "\n".join(headline_section(_doc({})))  # 12 queries: n.s. anyway
