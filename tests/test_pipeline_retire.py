"""The run's embed and index folders of a model it no longer serves are moved aside, never overwritten."""

import json

from pinclip.pipeline import retire_stale


def _folder(path, record, version):
    path.mkdir()
    (path / record).write_text(json.dumps({"model_version": version, "complete": True}))
    (path / "shard-00000.parquet").write_bytes(b"vectors")
    return path


def test_output_of_another_model_is_moved_aside_with_its_files(tmp_path):
    embed = _folder(tmp_path / "embed", "manifest.json", "pinclip-aaa")
    moved = retire_stale(embed, "manifest.json", "pinclip-aaa-mix50")
    assert moved == tmp_path / "embed-pinclip-aaa" and not embed.exists()
    assert (moved / "shard-00000.parquet").read_bytes() == b"vectors"
    again = _folder(tmp_path / "embed", "manifest.json", "pinclip-aaa")  # the same old model once more
    assert retire_stale(again, "manifest.json", "pinclip-bbb") == tmp_path / "embed-pinclip-aaa-2"


def test_output_of_this_model_or_of_unknown_origin_stays(tmp_path):
    index = _folder(tmp_path / "index", "index.json", "pinclip-aaa")
    assert retire_stale(index, "index.json", "pinclip-aaa") is None and index.is_dir()
    bare = tmp_path / "bare"
    bare.mkdir()
    assert retire_stale(bare, "index.json", "pinclip-aaa") is None and bare.is_dir()
    assert retire_stale(tmp_path / "absent", "index.json", "pinclip-aaa") is None
