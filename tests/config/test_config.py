"""The config system: defaults, YAML with _BASE_, typed overrides, unknown keys, dump/load round trip."""

from __future__ import annotations

import pytest
import yaml

from avdet.config import ConfigError, get_cfg, load_config, save_config


def write(path, data) -> str:
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_base_inheritance_is_relative_to_the_file(tmp_path):
    (tmp_path / "base").mkdir()
    base = write(
        tmp_path / "base" / "b.yaml", {"SOLVER": {"BASE_LR": 0.5, "MAX_ITER": 7}, "SEED": 3}
    )
    child = write(tmp_path / "child.yaml", {"_BASE_": "base/b.yaml", "SOLVER": {"MAX_ITER": 9}})
    cfg = load_config(child)
    assert cfg.SOLVER.BASE_LR == 0.5  # from the base
    assert cfg.SOLVER.MAX_ITER == 9  # the child wins
    assert cfg.SEED == 3
    assert base  # the base file exists where _BASE_ says


def test_list_of_bases_merges_in_order(tmp_path):
    write(tmp_path / "a.yaml", {"SEED": 1, "OUTPUT_DIR": "a"})
    write(tmp_path / "b.yaml", {"SEED": 2})
    child = write(tmp_path / "c.yaml", {"_BASE_": ["a.yaml", "b.yaml"]})
    cfg = load_config(child)
    assert (cfg.SEED, cfg.OUTPUT_DIR) == (2, "a")


def test_command_line_overrides_are_typed():
    cfg = load_config(
        None,
        [
            "SOLVER.STEPS", "(100, 200)",
            "MODEL.NUM_CLUSTERS", "16",
            "INPUT.RANDOM_FLIP", "False",
            "SOLVER.BASE_LR", "1",
            "MODEL.ANCHOR_GENERATOR.SIZES", "[[8], [16]]",
        ],
    )  # fmt: skip
    assert cfg.SOLVER.STEPS == (100, 200)
    assert cfg.MODEL.NUM_CLUSTERS == 16
    assert cfg.INPUT.RANDOM_FLIP is False
    assert cfg.SOLVER.BASE_LR == 1.0 and isinstance(cfg.SOLVER.BASE_LR, float)
    assert cfg.MODEL.ANCHOR_GENERATOR.SIZES == ((8,), (16,))


def test_plain_strings_need_no_quotes():
    cfg = load_config(None, ["OUTPUT_DIR", "runs/x", "MODEL.WEIGHTS", "a b.pth"])
    assert cfg.OUTPUT_DIR == "runs/x"
    assert cfg.MODEL.WEIGHTS == "a b.pth"


@pytest.mark.parametrize(
    ("opts", "message"),
    [
        (
            ["MODEL.NUM_CLUSTER", "3"],
            "unknown config key MODEL.NUM_CLUSTER; did you mean MODEL.NUM_CLUSTERS?",
        ),
        (["SOLVR.BASE_LR", "3"], "did you mean SOLVER?"),
        (["SOLVER.BASE_LR", "fast"], "SOLVER.BASE_LR expects float"),
        (["MODEL.NUM_CLUSTERS", "2.5"], "MODEL.NUM_CLUSTERS expects int"),
        (["INPUT.RANDOM_FLIP", "1"], "INPUT.RANDOM_FLIP expects bool"),
        (["SOLVER.MAX_ITER"], "KEY VALUE pairs"),
        (["SOLVER.BASE_LR.X", "1"], "is a value, not a section"),
    ],
)
def test_bad_overrides_name_the_key(opts, message):
    with pytest.raises(ConfigError, match=message.replace("?", r"\?").replace("(", r"\(")):
        load_config(None, opts)


def test_unknown_key_in_yaml_names_the_file(tmp_path):
    bad = write(tmp_path / "bad.yaml", {"SOLVER": {"BASE_LRR": 0.1}})
    with pytest.raises(
        ConfigError,
        match=r"bad\.yaml: unknown config key SOLVER\.BASE_LRR; did you mean SOLVER\.BASE_LR",
    ):
        load_config(bad)


@pytest.mark.parametrize(
    "old, expected", [(True, ("detections", "pseudo")), (False, ("detections",))]
)
def test_a_renamed_key_of_an_old_config_file_still_loads(tmp_path, caplog, old, expected):
    """config.yaml of an earlier version's output: PIPELINE.NAME_WITH_PSEUDO -> NAMING_VOTES."""
    path = write(tmp_path / "config.yaml", {"PIPELINE": {"NAME_WITH_PSEUDO": old}})
    votes = load_config(path).PIPELINE.NAMING_VOTES
    assert votes == expected
    assert "PIPELINE.NAME_WITH_PSEUDO is now PIPELINE.NAMING_VOTES" in caplog.text
    with pytest.raises(ConfigError, match="unknown config key PIPELINE.NAME_WITH_PSEUDO"):
        load_config(path, ["PIPELINE.NAME_WITH_PSEUDO", "True"])  # the command line: new names


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(tmp_path / "list.yaml")


def test_frozen_config_cannot_change():
    cfg = load_config()
    with pytest.raises(AttributeError, match="frozen"):
        cfg.SEED = 5
    with pytest.raises(AttributeError, match="frozen"):
        cfg.SOLVER.BASE_LR = 5.0


def test_saved_config_reloads_to_the_same_run(tmp_path):
    cfg = load_config(None, ["OUTPUT_DIR", str(tmp_path), "SOLVER.STEPS", "(3, 4)", "SEED", "11"])
    path = save_config(cfg)
    assert path == tmp_path / "config.yaml"
    assert load_config(path) == cfg


def test_defaults_are_independent_copies():
    a = get_cfg()
    a.SOLVER.BASE_LR = 123.0
    assert get_cfg().SOLVER.BASE_LR != 123.0
