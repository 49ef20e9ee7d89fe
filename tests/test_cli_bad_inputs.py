"""Bad input to the training and split commands: exit code 2, a clear message, no traceback, no temp file."""

from __future__ import annotations

import json
import shutil

import pytest

from pinclip.cli import main


def test_invalid_yaml_config_is_exit_2_naming_the_line(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("train:\n  steps: 10\n  lr: [0.1, 0.2\n")
    assert main(["train", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert f"{config}: not valid YAML at line" in err and "Traceback" not in err


def test_a_binary_config_file_is_exit_2(tmp_path, capsys):
    config = tmp_path / "weights.yaml"
    config.write_bytes(b"\xff\xfe\x00\x81binary")
    assert main(["train", "--config", str(config)]) == 2
    assert "not a text file" in capsys.readouterr().err


@pytest.mark.parametrize("splits", [{"cold_start_pins": "p001", "val_pins": [], "heldout_boards": []},
                                    {"cold_start_pins": [], "val_pins": [1, 2], "heldout_boards": []},
                                    ["not", "an", "object"]])
def test_a_wrongly_typed_splits_json_stops_train_with_exit_2(catalog, tmp_path, capsys, splits):
    data = tmp_path / "data"
    shutil.copytree(catalog["pins"].parent, data)
    (data / "splits.json").write_text(json.dumps(splits))
    code = main(["train", "--preset", "tiny", f"train.data_dir={data}", f"train.out_dir={tmp_path / 'out'}",
                 "train.steps=1", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "splits.json" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()  # stopped before any training work


def test_data_split_out_naming_a_folder_is_exit_2_and_leaves_no_temp_file(catalog, tmp_path, capsys):
    out = tmp_path / "splits_here"
    out.mkdir()
    code = main(["data", "split", "--pins", str(catalog["pins"]), "--boards", str(catalog["boards"]),
                 "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "is a folder" in err and str(out / "splits.json") in err
    assert list(out.iterdir()) == [] and [p.name for p in tmp_path.iterdir()] == ["splits_here"]
