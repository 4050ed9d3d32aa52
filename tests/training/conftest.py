"""Training fixtures: the tiny model's tokenizer, a recipe on the news fixture, and one finished training run.

The run trains two members (different seeds and prompt variants) through `qa-train` itself, on the tiny model
and the 4 invented questions of tests/fixtures/news_qa.json, in a few seconds; several tests read its output.
"""

from pathlib import Path

import pytest

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "news_qa.json"
MEMBERS = {"pr-s1": (1, "principled"), "zs-s2": (2, "zero-shot")}


def _recipe_text(model_dir: Path, output: Path, **train: object) -> str:
    values: dict[str, object] = {
        "base": str(model_dir),
        "data": [str(FIXTURE)],
        "split": "all",
        "holdout_fraction": 0.5,
        "max_seq_len": 1024,
        "epochs": 1,
        "eval_every": 0.5,
        "batch_size": 2,
        "grad_accum": 1,
        "warmup_ratio": 0.0,
        "device": "cpu",
        "backend": "peft",
        "val_max_new_tokens": 4,
        "output_dir": str(output),
        "progress": False,
    }
    values.update(train)
    lines = ["[train]"] + [f"{k} = {_toml(v)}" for k, v in values.items()]
    for name, (seed, style) in MEMBERS.items():
        lines += [
            "",
            "[[members]]",
            f'name = "{name}"',
            f"seed = {seed}",
            f'prompt_style = "{style}"',
            "r = 4",
            "alpha = 8",
            "learning_rate = 5e-3",
        ]
    return "\n".join(lines) + "\n"


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return repr(value)


@pytest.fixture(scope="session")
def members() -> dict[str, tuple[int, str]]:
    """The members of every test recipe: name -> (seed, prompt style)."""
    return dict(MEMBERS)


@pytest.fixture(scope="session")
def news_fixture() -> Path:
    return FIXTURE


@pytest.fixture(scope="session")
def make_recipe(tiny_model_dir: Path):
    """`make_recipe(folder, **train) -> recipe.toml` for the tiny model on the fixture, adapters going to
    `folder/adapters`; keyword arguments add or replace [train] keys."""

    def make(folder: Path, **train: object) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        recipe = folder / "recipe.toml"
        recipe.write_text(_recipe_text(tiny_model_dir, folder / "adapters", **train), encoding="utf-8")
        return recipe

    return make


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir: Path):
    from models.base.loading import load_tokenizer

    return load_tokenizer(tiny_model_dir)


@pytest.fixture(scope="session")
def trained_dir(make_recipe, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`qa-train --config <recipe>` run once: two adapter folders (pr-s1, zs-s2) plus `.training/`."""
    from training.cli import main

    root = tmp_path_factory.mktemp("trained")
    assert main(["--config", str(make_recipe(root))]) == 0
    return root / "adapters"
