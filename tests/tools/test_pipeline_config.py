"""How the pipeline builds each stage's config: shared keys copied, stage options, one prepared folder."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from avdet.config import load_config
from avdet.detection.model import build_detector
from avdet.models.av_model import build_av_model
from avdet.pipeline import Pipeline

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
CONFIG = CONFIGS / "toy" / "pipeline.yaml"


@pytest.mark.parametrize(
    "path", sorted(CONFIGS.rglob("*.yaml")), ids=lambda p: str(p.relative_to(CONFIGS))
)
def test_every_shipped_config_loads(path):
    """An unknown key, a value of the wrong type or a missing _BASE_ in a config raises."""
    load_config(path)


@pytest.mark.parametrize(
    "config, opts",
    [
        (CONFIG, []),
        (CONFIGS / "vggsound" / "pipeline.yaml", []),
        (
            CONFIGS / "vggsound" / "pipeline.yaml",
            ["PIPELINE.AV_CONFIG", "av_r50.yaml", "PIPELINE.DETECTOR_CONFIG", "detector_r50.yaml"],
        ),
    ],
    ids=["toy", "vggsound_r18", "vggsound_r50"],
)
def test_pipeline_detector_starts_from_the_stage1_visual_tower(tmp_path, config, opts):
    """The stage configs a pipeline pairs build models whose visual trunk the detector loads."""
    cfg = load_config(config, ["OUTPUT_DIR", str(tmp_path / "run"), *opts])
    pipeline = Pipeline(cfg, config)
    av_model = build_av_model(pipeline.av_config())
    weights = tmp_path / "run" / "av" / "model_final.pth"
    weights.parent.mkdir(parents=True)
    torch.save({"model": av_model.state_dict(), "iteration": 1}, weights)
    trunk = av_model.visual.trunk
    body = build_detector(pipeline.detector_config("detector"), 3).backbone.body
    loaded = body.state_dict()
    for key, value in trunk.state_dict().items():
        torch.testing.assert_close(loaded[key], value, msg=key)


def test_stages_share_data_keys_and_the_prepared_folder(tmp_path):
    cfg = load_config(
        CONFIG,
        [
            "OUTPUT_DIR", str(tmp_path / "run"),
            "DATASETS.CSV", "/data/vggsound.csv",
            "MODEL.NUM_CLUSTERS", "39",
            "SEED", "5",
            "PSEUDO.BETA", "0.7",
            "PIPELINE.AV_OPTS", "('SOLVER.MAX_ITER', '12')",
            "PIPELINE.DETECTOR_OPTS", "('SOLVER.BASE_LR', '0.001')",
        ],
    )  # fmt: skip
    pipeline = Pipeline(cfg, CONFIG)
    av, det = (
        pipeline.av_config(),
        pipeline.detector_config("detector", "DATASETS.TRAIN_JSON", "p.json"),
    )
    assert av.TASK == "av" and det.TASK == "detector"  # from the stage configs
    assert av.MODEL.NUM_CLUSTERS == 39 and av.SEED == det.SEED == 5 and av.PSEUDO.BETA == 0.7
    assert av.SOLVER.MAX_ITER == 12 and det.SOLVER.BASE_LR == 0.001
    assert (
        str(tmp_path / "run" / "av") == av.OUTPUT_DIR
        and str(tmp_path / "run" / "detector") == det.OUTPUT_DIR
    )
    prepared = str(tmp_path / "run" / "prepared")
    assert av.DATASETS.PREPARED_DIR == det.DATASETS.PREPARED_DIR == prepared
    assert det.DATASETS.TRAIN_JSON == "p.json" and det.DATASETS.CSV == "/data/vggsound.csv"
    assert str(tmp_path / "run" / "av" / "model_final.pth") == det.MODEL.BACKBONE.WEIGHTS


def test_unknown_naming_vote_source_fails_before_any_stage_runs(tmp_path):
    cfg = load_config(
        CONFIG, ["OUTPUT_DIR", str(tmp_path / "run"), "PIPELINE.NAMING_VOTES", "('boxes', 'gt')"]
    )
    with pytest.raises(ValueError, match="PIPELINE.NAMING_VOTES must be a non-empty subset"):
        Pipeline(cfg, CONFIG)
    assert not (tmp_path / "run").exists()
