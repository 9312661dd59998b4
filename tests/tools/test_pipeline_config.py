"""How the pipeline builds each stage's config: shared keys copied, stage options, one prepared folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from avdet.config import load_config
from avdet.pipeline import Pipeline

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "toy" / "pipeline.yaml"


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
