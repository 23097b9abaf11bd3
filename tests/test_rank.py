"""tlrun-rank on tiny data: the ranked CSV, the MMD column with a source domain, one-line errors."""

from __future__ import annotations

import pandas as pd
import pytest

RANK_COLUMNS = ["rank", "model", "weights", "logme", "leep", "feature_dim", "images", "image_size", "extract_s"]


def rank_main(args: list[str], capsys) -> tuple[int, str, str]:
    from tlrun.rank_cli import main

    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--threads", "1"])
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def test_rank_csv_and_table(tmp_path, capsys):
    code, out, err = rank_main(["digits", "--models", "lenet:null", "small_resnet:null", "--image-size", "16",
                                "--max-per-class", "8", "--out", str(tmp_path / "r")], capsys)
    assert code == 0, err
    table = pd.read_csv(tmp_path / "r" / "rank.csv")
    assert list(table.columns) == RANK_COLUMNS
    assert table["rank"].tolist() == [1, 2]
    assert table["logme"].is_monotonic_decreasing
    assert set(table["model"]) == {"lenet", "small_resnet"}
    assert (table["images"] == len(table) * 0 + table["images"].iloc[0]).all() and table["images"].iloc[0] > 40
    # LEEP is a mean log-likelihood (<= 0); each model's features took measurable time to extract.
    assert (table["leep"] < 0).all() and (table["extract_s"] > 0).all()
    assert "| 1 |" in out


def test_rank_with_source_adds_mmd(tmp_path, capsys):
    code, out, err = rank_main(["digits", "--source", "digits_m", "--models", "lenet:null", "--image-size", "16",
                                "--max-per-class", "6", "--by", "mmd", "--out", str(tmp_path / "r")], capsys)
    assert code == 0, err
    table = pd.read_csv(tmp_path / "r" / "rank.csv")
    assert list(table.columns) == RANK_COLUMNS[:5] + ["mmd"] + RANK_COLUMNS[5:]
    assert table["mmd"].iloc[0] > 0


@pytest.mark.parametrize("args, needle", [
    (["digits", "--models", "mobilenet_v9"], "unknown model 'mobilenet_v9'"),
    (["digitz", "--models", "lenet:null"], "unknown dataset 'digitz'"),
    (["./no/such/folder", "--models", "lenet:null"], "not a folder"),
    (["digits", "--models", "lenet:null", "--by", "mmd"], "needs a source domain"),
])
def test_bad_inputs_are_one_line(tmp_path, capsys, args, needle):
    code, out, err = rank_main([*args, "--out", str(tmp_path / "r")], capsys)
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("tlrun-rank: error:") and needle in lines[0], err
    assert not (tmp_path / "r").exists()
