"""Recipes: the shipped ones load, overrides apply, and every bad value names its recipe key / --set flag."""

from pathlib import Path

import pytest

from training.config import LORA_TARGETS, ConfigError, MemberConfig, TrainConfig, build_run, load_recipe

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


def test_the_korquad_recipe_has_three_different_members():
    run = load_recipe(RECIPES / "korquad-qwen0.5b.toml")
    train = run.train
    assert (train.base, train.split, train.max_seq_len, train.epochs, train.eval_every) == (
        "qwen2.5-coder-0.5b",
        "train",
        1024,
        0.6,
        0.05,
    )
    assert train.data_paths()[0].name == "KorQuAD_v1.0_dev.json"
    assert train.data_paths()[0].parent.name == "korquad" and train.data_paths()[0].is_absolute()
    assert len(run.members) == 3
    assert len({m.seed for m in run.members}) == 3
    assert {m.prompt_style for m in run.members} == {"zero-shot", "principled"}
    for member in run.members:
        assert (member.r, member.alpha, member.dropout, member.learning_rate) == (8, 16, 0.05, 2e-4)
        assert member.target_modules == LORA_TARGETS
    assert load_recipe(RECIPES / "tiny-smoke.toml").train.base == "tiny-random"


def test_overrides_set_train_keys_every_member_or_one_member():
    run = load_recipe(
        RECIPES / "korquad-qwen0.5b.toml",
        [
            "train.epochs=0.45",
            "train.output_dir=/tmp/out",
            "members.learning_rate=1e-4",
            "members.qwen05-pr-s2.r=4",
            "train.neftune_noise_alpha=5",
            "train.backend=peft",
        ],
    )
    assert run.train.epochs == 0.45 and run.train.output_dir == "/tmp/out" and run.train.backend == "peft"
    assert run.train.neftune_noise_alpha == 5
    assert [m.learning_rate for m in run.members] == [1e-4] * 3
    assert [m.r for m in run.members] == [8, 4, 8]
    assert run.overrides[0] == "train.epochs=0.45"
    assert [m.name for m in run.select(["qwen05-zs-s3"]).members] == ["qwen05-zs-s3"]


def test_attention_defaults_keep_cudnn_sdpa_off_and_can_be_overridden():
    train = load_recipe(RECIPES / "korquad-qwen0.5b.toml").train
    assert (train.attn_implementation, train.cudnn_sdpa) == ("sdpa", False)
    run = load_recipe(
        RECIPES / "korquad-qwen0.5b.toml", ["train.attn_implementation=eager", "train.cudnn_sdpa=true"]
    )
    assert (run.train.attn_implementation, run.train.cudnn_sdpa) == ("eager", True)
    assert run.to_dict()["train"]["cudnn_sdpa"] is True  # what the manifest's `train` records


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.epochs=0", "train.epochs: must be > 0"),
        ("train.epochz=1", "train.epochz: unknown key"),
        ("train.split=eval", "train.split: never train on the eval split"),
        ("train.length_policy=truncate", "train.length_policy: must be one of window, drop"),
        ("train.batch_size=1.5", "train.batch_size: must be an integer"),
        ("train.prompt_loss_weight=2", "train.prompt_loss_weight: must be <= 1"),
        ("members.dropout=1.5", "members.qwen05-zs-s1.dropout: must be <= 0.99"),
        ("members.qwen05-pr-s2.prompt_style=chatty", "members.qwen05-pr-s2.prompt_style: "),
        ("members.nobody.r=8", "--set: 'members.nobody.r=8': no member named 'nobody'"),
        ("epochs=1", "--set: 'epochs=1' must look like train.KEY=VALUE"),
        ("train.attn_implementation=flash", "train.attn_implementation: must be one of sdpa, eager"),
        ("train.cudnn_sdpa=1", "train.cudnn_sdpa: must be true or false"),
    ],
)
def test_a_bad_value_names_its_key(override, message):
    with pytest.raises(ConfigError) as caught:
        load_recipe(RECIPES / "korquad-qwen0.5b.toml", [override])
    assert str(caught.value).startswith(message)


def test_structural_errors_name_the_section():
    with pytest.raises(ConfigError, match="^members: a recipe needs at least one"):
        build_run({"train": {}})
    with pytest.raises(ConfigError, match="^members.name: names must be unique; repeated: a"):
        build_run({"members": [{"name": "a"}, {"name": "a"}]})
    with pytest.raises(ConfigError, match="^members\\[0\\].name: every member needs a name"):
        build_run({"members": [{"seed": 1}]})
    with pytest.raises(ConfigError, match="^trian: unknown section"):
        build_run({"trian": {}, "members": [{"name": "a"}]})
    with pytest.raises(ConfigError, match="^members.name: 'a b' must match"):
        MemberConfig(name="a b")
    with pytest.raises(ConfigError, match="^members.name: 'Base' is reserved for the base model"):
        MemberConfig(name="Base")
    with pytest.raises(ConfigError, match="^train.backend: unsloth needs CUDA"):
        TrainConfig(device="cpu", backend="unsloth")
    with pytest.raises(ConfigError, match="^--only: unknown member"):
        build_run({"members": [{"name": "a"}]}).select(["b"])


def test_a_yaml_recipe_reads_like_the_toml_one(tmp_path: Path):
    yaml_recipe = tmp_path / "r.yaml"
    yaml_recipe.write_text(
        "train:\n  epochs: 0.45\n  data: x.json\nmembers:\n  - name: a\n    seed: 3\n"
        "    target_modules: [q_proj, v_proj]\n",
        encoding="utf-8",
    )
    toml_recipe = tmp_path / "r.toml"
    toml_recipe.write_text(
        '[train]\nepochs = 0.45\ndata = "x.json"\n[[members]]\nname = "a"\nseed = 3\n'
        'target_modules = ["q_proj", "v_proj"]\n',
        encoding="utf-8",
    )
    from_yaml, from_toml = load_recipe(yaml_recipe), load_recipe(toml_recipe)
    assert from_yaml.to_dict() == from_toml.to_dict()
    assert from_toml.train.data == ("x.json",) and from_toml.members[0].target_modules == ("q_proj", "v_proj")



def test_the_1_5b_recipe_has_three_members_that_differ_and_fit_the_size_budget():
    run = load_recipe(RECIPES / "korquad-qwen1.5b.toml")
    assert run.train.base == "qwen2.5-coder-1.5b"
    assert run.train.output_dir == "adapters/qwen2.5-coder-1.5b"
    assert run.train.split == "train" and run.train.holdout_fraction > 0
    members = run.members
    assert len(members) == 3 and len({m.seed for m in members}) == 3
    assert {m.prompt_style for m in members} == {"zero-shot", "principled"}
    assert [m.neftune_noise_alpha for m in members].count(None) == 2  # NEFTune on one
    # r=4 on the 7 projections of Qwen2.5-1.5B (28 layers, hidden 1536, kv 256, MLP 8960), bf16 bytes
    shapes = [(1536, 1536), (1536, 256), (1536, 256), (1536, 1536), (1536, 8960), (1536, 8960), (8960, 1536)]
    per_layer = sum(4 * (i + o) for i, o in shapes)
    assert all(m.r == 4 and m.target_modules == LORA_TARGETS for m in members)
    assert len(members) * per_layer * 28 * 2 <= 32e6


def test_a_member_may_have_its_own_neftune_noise():
    assert MemberConfig(name="m", neftune_noise_alpha=5.0).neftune_noise_alpha == 5.0
    assert MemberConfig(name="m").neftune_noise_alpha is None
    with pytest.raises(ConfigError, match="^members.m.neftune_noise_alpha: must be > 0"):
        MemberConfig(name="m", neftune_noise_alpha=-1.0)
    run = load_recipe(RECIPES / "korquad-qwen1.5b.toml", ["members.q15-zs-s1.neftune_noise_alpha=2"])
    assert run.members[0].neftune_noise_alpha == 2
