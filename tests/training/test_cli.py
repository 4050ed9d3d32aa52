"""`qa-train`: the lengths command, and recipe errors reported with exit status 2."""

import pytest

from training.cli import main
from training.runner import REPORT_DIR


def test_lengths_command_writes_the_table_and_histogram(make_recipe, tmp_path, capsys):
    recipe = make_recipe(tmp_path)
    assert main(["lengths", "--config", str(recipe), "--set", "train.max_seq_len=700"]) == 0
    out = capsys.readouterr().out
    assert "| principled | 2 |" in out and "(> 700)" in out and "lengths.png" in out
    assert (tmp_path / "adapters" / REPORT_DIR / "lengths.png").is_file()
    assert not [p for p in (tmp_path / "adapters").iterdir() if not p.name.startswith(".")]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "train.epochs=-1"], "train.epochs: must be > 0"),
        (["--only", "nobody"], "--only: unknown member(s) nobody"),
        (["--set", "train.data=/nonexistent.json"], "train.data: /nonexistent.json does not exist"),
    ],
)
def test_bad_recipes_exit_2_naming_the_key(make_recipe, tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as caught:
        main(["--config", str(make_recipe(tmp_path)), *args])
    assert caught.value.code == 2
    assert message in capsys.readouterr().err


def test_existing_adapters_are_not_overwritten_by_default(trained_dir, make_recipe, tmp_path, capsys):
    recipe = make_recipe(tmp_path, output_dir=str(trained_dir))
    with pytest.raises(SystemExit) as caught:
        main(["--config", str(recipe)])
    assert caught.value.code == 2 and "train.overwrite=true" in capsys.readouterr().err
