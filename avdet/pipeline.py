"""The whole method in one run: prepare -> stage 1 -> pseudo-boxes -> detector -> naming -> metrics.

Every stage writes into its own folder of OUTPUT_DIR and is skipped (or resumed from its last
checkpoint) when its output is already there, so a killed pipeline picks up where it stopped:

    OUTPUT_DIR/av/          stage 1 (checkpoints, inference/av_results.json, heatmaps.png)
    OUTPUT_DIR/pseudo/      pseudo_train.json (COCO of clusters), pseudo_report.json
    OUTPUT_DIR/gt/          the ground truth re-keyed to the prepared frames, the few labels
    OUTPUT_DIR/detector/    the self-supervised detector; naming/ holds mapping and results
    OUTPUT_DIR/baseline_*/  detectors trained with more supervision, the same settings
    OUTPUT_DIR/report.md, report.json
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from avdet.config import CfgNode, load_config
from avdet.data.av_dataset import load_rgb
from avdet.data.coco import load_coco, save_coco
from avdet.data.prepare import FAILURES, load_manifest, prepared_counts
from avdet.data.sources import DataSource, prepared_once, resolve_source
from avdet.detection.dataset import CocoDetectionDataset
from avdet.detection.inference import classify_boxes, run_detector_inference
from avdet.detection.task import detector_categories, load_detector
from avdet.engine.defaults import default_setup
from avdet.engine.tasks import get_task
from avdet.evaluation.coco_eval import evaluate_coco, write_coco_report
from avdet.matching.hungarian import (
    UNKNOWN,
    agreement_matrix,
    match_clusters,
    relabel_detections,
    save_mapping,
)
from avdet.matching.labels import sample_labelled_images
from avdet.models.av_task import load_av_model
from avdet.pseudo.make import PSEUDO_JSON, make_pseudo_labels
from avdet.utils.io import atomic_write_json, atomic_write_text
from avdet.utils.visualize import draw_boxes, draw_detections, image_grid, save_png

logger = logging.getLogger(__name__)

# Where naming votes may come from (PIPELINE.NAMING_VOTES; avdet/config/defaults.py says what
# each one is).
NAMING_VOTES = ("boxes", "pseudo", "detections")
# The label sweep's key for PIPELINE.LABEL_SWEEP entry 0: every labelled train image.
ALL_LABELS = "all"

# Keys the pipeline config hands to every stage (sections are copied whole).
SHARED_KEYS = (
    "DATASETS", "SEED", "DEVICE", "DATALOADER", "MODEL.NUM_CLUSTERS", "PSEUDO",
    "TEST.CIOU_THRESHOLD", "TEST.CIOU_FIXED_VALUE", "TEST.HEATMAP_SIZE",
    "TEST.POINTING_ON_INPUT",
)  # fmt: skip


def sweep_key(per_class: int) -> str:
    """report.json's key for a label-sweep entry: the labels per class, or "all" for 0."""
    return ALL_LABELS if per_class <= 0 else str(per_class)


def stage_config(
    cfg: CfgNode,
    config_file: str,
    opts: Sequence[str],
    output_dir: Path,
    base_dir: Path,
    *extra: str,
) -> CfgNode:
    """A stage's config: its file, the pipeline's shared keys, its *_OPTS, then `extra` pairs."""
    path = Path(config_file)
    if not path.is_absolute() and (base_dir / path).is_file():
        path = base_dir / path
    stage = load_config(path, list(opts)).defrost()
    for key in SHARED_KEYS:
        *parents, leaf = key.split(".")
        src, dst = cfg, stage
        for part in parents:
            src, dst = src[part], dst[part]
        dst[leaf] = src[leaf].clone() if isinstance(src[leaf], CfgNode) else src[leaf]
    stage.merge_from_list(list(opts) + ["OUTPUT_DIR", str(output_dir), *extra])
    return stage.freeze()


def frames_coco(gt: dict, manifest: Sequence[dict], gt_name: str | Path) -> dict:
    """GT keyed by video file name -> the same GT on the prepared frames (file_name = frame path).

    Images whose clip was not prepared (a failed decode, a missing video) are dropped with a
    warning; ids are kept. No image matching a prepared clip means the GT is keyed some other way:
    a ValueError naming `gt_name` (the GT file or files) says how it must be keyed.
    """
    frame_of = {Path(r["video"]).name: r for r in manifest}
    images, dropped = [], []
    for image in gt["images"]:
        record = frame_of.get(image["file_name"])
        if record is None:
            dropped.append(image["file_name"])
        else:
            images.append({**image, "file_name": record["frame"], "clip_id": record["clip_id"]})
    if dropped and not images:
        expected = f"a prepared clip is {min(frame_of)!r}" if frame_of else "no clip was prepared"
        raise ValueError(
            f"{gt_name}: none of its {len(dropped)} images is a prepared clip. GT images are "
            f"matched to clips by file_name, which must be the clip's video file name "
            f"<youtube_id>_<start:06d>.mp4 as in the CSV: the GT has {dropped[0]!r}, {expected} "
            f"(or every clip of the GT failed: see {FAILURES} in the prepared folder)"
        )
    if dropped:
        logger.warning(
            "%s: %d of %d GT images have no prepared clip (failed or missing video) and are "
            "left out, e.g. %s",
            gt_name,
            len(dropped),
            len(gt["images"]),
            ", ".join(dropped[:3]),
        )
    kept = {image["id"] for image in images}
    return {
        "info": gt.get("info", {}),
        "images": images,
        "annotations": [a for a in gt["annotations"] if a["image_id"] in kept],
        "categories": gt["categories"],
    }


def relabel_pseudo(pseudo: dict, gt: dict, manifest: Sequence[dict], agnostic: bool) -> dict:
    """The pseudo-boxes with each clip's true class (gt_classes baseline) or one class (agnostic)."""
    if agnostic:
        categories = [{"id": 1, "name": "object"}]
        class_of = {}
    else:
        categories = gt["categories"]
        name_to_id = {c["name"]: c["id"] for c in categories}
        class_of = {r["clip_id"]: name_to_id.get(r["label"]) for r in manifest}
    images = {i["id"]: i for i in pseudo["images"]}
    annotations = []
    for ann in pseudo["annotations"]:
        category = 1 if agnostic else class_of.get(images[ann["image_id"]]["clip_id"])
        if category is not None:
            annotations.append({**ann, "category_id": category})
    return {**pseudo, "annotations": annotations, "categories": categories}


def pseudo_detections(pseudo: dict, images: dict) -> list[dict]:
    """The pseudo-boxes of the images of a COCO dict that are pseudo-labelled training frames, as
    COCO results (keyed by that dict's image ids, matched by file name)."""
    image_of = {i["file_name"]: i["id"] for i in images["images"]}
    pseudo_file = {i["id"]: i["file_name"] for i in pseudo["images"]}
    return [
        {
            "image_id": image_of[pseudo_file[a["image_id"]]],
            "category_id": a["category_id"],
            "bbox": a["bbox"],
            "score": a.get("score", 1.0),
        }
        for a in pseudo["annotations"]
        if pseudo_file[a["image_id"]] in image_of
    ]


def agnostic_gt(gt: dict) -> dict:
    """Every GT box as one class, for class-agnostic evaluation."""
    return {
        **gt,
        "annotations": [{**a, "category_id": 1} for a in gt["annotations"]],
        "categories": [{"id": 1, "name": "object"}],
    }


class Pipeline:
    """Runs the stages of one pipeline config; `run()` returns report.json's content."""

    def __init__(self, cfg: CfgNode, config_file: str | Path) -> None:
        # Pin the prepared folder: its default follows OUTPUT_DIR, which differs per stage.
        prepared = str(resolve_source(cfg).prepared_dir)
        self.cfg = (
            cfg.clone().defrost().merge_from_list(["DATASETS.PREPARED_DIR", prepared]).freeze()
        )
        self.out = Path(cfg.OUTPUT_DIR)
        votes = set(cfg.PIPELINE.NAMING_VOTES)
        if not votes or not votes <= set(NAMING_VOTES):
            raise ValueError(
                f"PIPELINE.NAMING_VOTES must be a non-empty subset of {NAMING_VOTES}; "
                f"got {list(cfg.PIPELINE.NAMING_VOTES)}"
            )
        self.base_dir = Path(config_file).resolve().parent if config_file else Path.cwd()
        self.report: dict = {}

    def av_config(self) -> CfgNode:
        p = self.cfg.PIPELINE
        return stage_config(self.cfg, p.AV_CONFIG, p.AV_OPTS, self.out / "av", self.base_dir)

    def detector_config(self, name: str, *extra: str) -> CfgNode:
        p = self.cfg.PIPELINE
        if p.BACKBONE_FROM_AV:
            extra = ("MODEL.BACKBONE.WEIGHTS", str(self.out / "av" / "model_final.pth"), *extra)
        return stage_config(
            self.cfg, p.DETECTOR_CONFIG, p.DETECTOR_OPTS, self.out / name, self.base_dir, *extra
        )

    def run(self) -> dict:
        """Prepare the clips, run every stage, write report.json and report.md.

        The clips are prepared once, with stage 1's config: its INPUT.FRAME_TIME and audio rate
        are what stage 1 reads the prepared files with. Inside `prepared_once` the stages' own
        ensure_prepared (stage 1 calls it) neither reads the CSV again nor logs it again.
        """
        start = time.perf_counter()
        av_cfg = self.av_config()
        with prepared_once(av_cfg) as source:
            self.run_stages(source, av_cfg)
        self.report["wall_seconds"] = time.perf_counter() - start
        summary = self.summary()
        atomic_write_json(self.out / "report.json", summary, indent=2)
        atomic_write_text(self.out / "report.md", report_markdown(summary))
        return summary

    def run_stages(self, source: DataSource, av_cfg: CfgNode) -> None:
        """Stage 1 (`av_cfg`), the pseudo-boxes, the detector and the baselines, on `source`."""
        # Counted from the folder, so a rerun that prepares nothing still reports them.
        self.report["prepare"] = {
            **prepared_counts(source.prepared_dir),
            "failures_file": str(source.prepared_dir / FAILURES),
        }
        manifest = load_manifest(source.prepared_dir)
        gt = self.ground_truth(source, manifest)
        default_setup(av_cfg)
        self.report["av"] = get_task("av")(av_cfg, argparse.Namespace(resume=True, eval_only=False))
        pseudo_path = self.out / "pseudo" / PSEUDO_JSON
        if not pseudo_path.exists():
            make_pseudo_labels(av_cfg, load_av_model(av_cfg), source, self.out / "pseudo")
        self.report["pseudo"] = load_json(self.out / "pseudo" / "pseudo_report.json")
        image_dir = str(source.prepared_dir)
        self.report["selfsup"] = self.selfsup_detector(pseudo_path, gt, image_dir)
        for name in self.cfg.PIPELINE.BASELINES:
            self.report[name] = self.baseline(name, pseudo_path, gt, manifest, image_dir)

    # -- data ------------------------------------------------------------------------------
    def ground_truth(self, source: DataSource, manifest: list[dict]) -> dict[str, Path]:
        """GT of the train and test splits (and the few labels) on the prepared frames."""
        paths = {}
        for role, splits in (("train", self.cfg.DATASETS.TRAIN), ("test", self.cfg.DATASETS.TEST)):
            files = [source.annotation(f"instances_{s}.json") for s in splits]
            if not all(files):
                raise FileNotFoundError(
                    f"the pipeline needs COCO ground truth instances_<split>.json for splits "
                    f"{list(splits)} in {source.annotation_dir} (DATASETS.ANNOTATION_DIR)"
                )
            merged = merge_coco([load_coco(f) for f in files])
            paths[role] = save_coco(
                self.out / "gt" / f"instances_{role}.json",
                frames_coco(merged, manifest, ", ".join(map(str, files))),
            )
        # The few labels: DATASETS.LABELS (keyed by video file name) for the main count;
        # otherwise, and for the sweep, k train images per class drawn with the seed.
        own = self.cfg.DATASETS.LABELS
        main_k = self.cfg.PIPELINE.LABELS_PER_CLASS
        train_gt = load_coco(paths["train"])
        self.check_cluster_count(train_gt, paths["train"])
        for k in sorted({main_k, *self.cfg.PIPELINE.LABEL_SWEEP}):
            if own and k == main_k:
                subset = frames_coco(load_coco(own), manifest, own)
            else:
                subset = sample_labelled_images(train_gt, k, seed=self.cfg.SEED)
            paths[f"labels_{k}"] = save_coco(self.out / "gt" / f"labels_{k}.json", subset)
        return paths

    def check_cluster_count(self, train_gt: dict, path: Path) -> None:
        """Say how MODEL.NUM_CLUSTERS compares with the classes of the ground truth: the toy
        config's K is easy to keep by mistake on one's own data, and naming is one to one, so
        with fewer clusters than classes some classes can never be detected."""
        classes = len({a["category_id"] for a in train_gt["annotations"]})
        k = self.cfg.MODEL.NUM_CLUSTERS
        if k < classes:
            logger.warning(
                "MODEL.NUM_CLUSTERS %d is below the %d classes boxed in %s: at most %d of them "
                "can be named; set MODEL.NUM_CLUSTERS %d (or more, to over-cluster)",
                k, classes, path, k, classes,
            )  # fmt: skip
        else:
            logger.info("%d clusters for the %d classes boxed in %s", k, classes, path)

    # -- detectors -------------------------------------------------------------------------
    def selfsup_detector(self, pseudo_path: Path, gt: dict[str, Path], image_dir: str) -> dict:
        """Train on the pseudo-boxes (classes = clusters), then name the clusters and evaluate."""
        cfg = self.detector_config(
            "detector", "DATASETS.TRAIN_JSON", str(pseudo_path), "DATASETS.IMAGE_DIR", image_dir
        )
        default_setup(cfg)
        trained = get_task("detector")(cfg, argparse.Namespace(resume=True, eval_only=False))
        categories = detector_categories(cfg)
        model = load_detector(cfg, categories)
        naming = self.out / "detector" / "naming"
        batch = cfg.TEST.IMS_PER_BATCH

        def detect(json_path: Path) -> list[dict]:
            dataset = CocoDetectionDataset(json_path, image_dir)
            return run_detector_inference(model, dataset, None, categories, batch_size=batch)

        test_detections = detect(gt["test"])
        test_gt = load_coco(gt["test"])
        class_names = {c["id"]: c["name"] for c in test_gt["categories"]}
        sources = set(self.cfg.PIPELINE.NAMING_VOTES)
        pseudo = load_coco(pseudo_path) if "pseudo" in sources else None
        sweep = {}
        main_k = self.cfg.PIPELINE.LABELS_PER_CLASS
        for k in sorted({main_k, *self.cfg.PIPELINE.LABEL_SWEEP}):
            labels = load_coco(gt[f"labels_{k}"])
            votes = []
            if "detections" in sources:
                votes += detect(gt[f"labels_{k}"])
            if "boxes" in sources:
                labelled = CocoDetectionDataset(gt[f"labels_{k}"], image_dir)
                votes += classify_boxes(model, labelled, categories, batch_size=batch)
            if pseudo is not None:
                votes += pseudo_detections(pseudo, labels)
            agreement = agreement_matrix(votes, labels, cluster_ids=categories.category_ids)
            mapping = match_clusters(
                agreement.matrix,
                agreement.cluster_ids,
                agreement.class_ids,
                self.cfg.PIPELINE.KEEP_UNMATCHED,
            )
            unknown_id = (
                max(class_names) + 1 if self.cfg.PIPELINE.KEEP_UNMATCHED == UNKNOWN else None
            )
            named = relabel_detections(test_detections, mapping, unknown_category_id=unknown_id)
            metrics = evaluate_coco(test_gt, named)
            sweep[sweep_key(k)] = {
                "labelled_images": len(labels["images"]),
                "named_clusters": sum(isinstance(v, int) for v in mapping.values()),
                "AP50": metrics["AP50"],
            }
            if k == main_k:
                save_mapping(naming / "mapping.json", mapping, agreement, class_names)
                atomic_write_json(naming / "coco_instances_results_named.json", named)
                write_coco_report(metrics, naming, "selfsup")
                named_metrics = metrics
                save_png(
                    naming / "detections.png",
                    detection_grid(test_gt, named, image_dir, class_names),
                )
        return {**named_metrics, "label_sweep": sweep, "train": trained}

    def baseline(
        self, name: str, pseudo_path: Path, gt: dict[str, Path], manifest: list, image_dir: str
    ) -> dict:
        """A detector with more supervision than ours, same settings, evaluated on the test GT."""
        test_json = gt["test"]
        if name == "supervised":
            train_json = gt["train"]
        elif name in ("gt_classes", "agnostic"):
            pseudo = load_coco(pseudo_path)
            relabelled = relabel_pseudo(
                pseudo, load_coco(gt["train"]), manifest, name == "agnostic"
            )
            train_json = save_coco(self.out / f"baseline_{name}" / "train.json", relabelled)
            if name == "agnostic":
                test_json = save_coco(
                    self.out / f"baseline_{name}" / "test_agnostic.json",
                    agnostic_gt(load_coco(gt["test"])),
                )
        else:
            raise ValueError(
                f"unknown PIPELINE.BASELINES entry {name!r}; valid: supervised, gt_classes, agnostic"
            )
        cfg = self.detector_config(
            f"baseline_{name}",
            "DATASETS.TRAIN_JSON", str(train_json),
            "DATASETS.TEST_JSON", str(test_json),
            "DATASETS.IMAGE_DIR", image_dir,
        )  # fmt: skip
        default_setup(cfg)
        return get_task("detector")(cfg, argparse.Namespace(resume=True, eval_only=False))

    # -- report ----------------------------------------------------------------------------
    def summary(self) -> dict:
        r = self.report
        av = r.get("av", {})
        out = {
            "map50_selfsup": r["selfsup"].get("AP50"),
            "map50_supervised": r.get("supervised", {}).get("AP50"),
            "map50_gt_classes": r.get("gt_classes", {}).get("AP50"),
            "map50_agnostic": r.get("agnostic", {}).get("AP50"),
            **{
                k: av.get(k)
                for k in ("ciou50", "ciou50_ceiling", "auc", "pointing", "nmi", "accuracy")
            },
            "pseudo_quality": r.get("pseudo", {}).get("quality"),
            "label_sweep": r["selfsup"].get("label_sweep"),
            "labels_per_class": self.cfg.PIPELINE.LABELS_PER_CLASS,
            "clips": r["prepare"],
            "wall_seconds": r.get("wall_seconds"),
            "stages": r,
        }
        return out


def detection_grid(
    gt: dict, detections: list[dict], image_dir: str, names: dict[int, str], count: int = 12
) -> np.ndarray:
    """The first `count` test frames with the named detections drawn (GT boxes in white)."""
    by_image: dict[int, list[dict]] = {}
    for det in detections:
        by_image.setdefault(det["image_id"], []).append(det)
    tiles = []
    for image in gt["images"][:count]:
        rgb = load_rgb(Path(image_dir) / image["file_name"])
        truth = [
            (x, y, x + w, y + h)
            for x, y, w, h in (a["bbox"] for a in gt["annotations"] if a["image_id"] == image["id"])
        ]
        rgb = draw_boxes(rgb, truth, colors=[(255, 255, 255)] * len(truth), thickness=1)
        tiles.append(draw_detections(rgb, by_image.get(image["id"], []), names))
    return image_grid(tiles, columns=4, tile_size=(144, 192))


def merge_coco(datasets: Sequence[dict]) -> dict:
    """Concatenate COCO datasets with the same categories; annotation ids are renumbered."""
    if len(datasets) == 1:
        return datasets[0]
    images = [i for d in datasets for i in d["images"]]
    if len({i["id"] for i in images}) != len(images):
        raise ValueError("cannot merge COCO files whose image ids clash")
    annotations = [a for d in datasets for a in d["annotations"]]
    return {
        "images": images,
        "annotations": [{**a, "id": n} for n, a in enumerate(annotations, start=1)],
        "categories": datasets[0]["categories"],
    }


def load_json(path: Path) -> dict:
    return json.loads(path.read_text())


def _fmt(value: object) -> str:
    return f"{100 * value:.1f}" if isinstance(value, float) else "n/a"


def clips_line(clips: dict) -> str:
    """report.md's line on the data: clips prepared, and those skipped with their reasons."""
    line = f"Clips: {clips['prepared']} prepared, {clips['failed']} skipped"
    if clips["failed"]:
        reasons = ", ".join(f"{k}: {n}" for k, n in clips["failed_by_reason"].items())
        line += f" ({reasons}; listed in `{clips['failures_file']}`)"
    return line + "."


def report_markdown(summary: dict) -> str:
    """report.md: the paper's table shape, localisation, clustering, labels sweep, pictures."""
    s = summary
    lines = [
        "# avdet pipeline report",
        "",
        clips_line(s["clips"]),
        "",
        "## Detection (COCO mAP@0.5 on the test split, %)",
        "",
        "| method | mAP@0.5 |",
        "| --- | --- |",
        f"| ours: self-supervised, clusters named with {s['labels_per_class']} label(s) per class "
        f"| {_fmt(s['map50_selfsup'])} |",
        f"| pseudo-boxes + GT classes | {_fmt(s['map50_gt_classes'])} |",
        f"| class-agnostic pseudo-boxes (class-agnostic AP) | {_fmt(s['map50_agnostic'])} |",
        f"| supervised (GT boxes and classes) | {_fmt(s['map50_supervised'])} |",
        "",
        "## Naming the clusters: labels per class",
        "",
        "| labels per class | labelled images | named clusters | mAP@0.5 |",
        "| --- | --- | --- | --- |",
    ]
    sweep = s.get("label_sweep") or {}
    for k in sorted(sweep, key=lambda k: math.inf if k == ALL_LABELS else int(k)):
        row = sweep[k]
        lines.append(
            f"| {k} | {row['labelled_images']} | {row['named_clusters']} | {_fmt(row['AP50'])} |"
        )
    q = s.get("pseudo_quality") or {}
    lines += [
        "",
        "## Stage 1: localisation (VGG-SS protocol) and clustering (%)",
        "",
        "| cIoU@0.5 | its ceiling | AUC | pointing | NMI | accuracy |",
        "| --- | --- | --- | --- | --- | --- |",
        "| "
        + " | ".join(
            _fmt(s.get(k))
            for k in ("ciou50", "ciou50_ceiling", "auc", "pointing", "nmi", "accuracy")
        )
        + " |",
        "",
        "## Stage 2: pseudo-boxes (%)",
        "",
        "| boxes with IoU >= 0.5 | class-agnostic AP50 | cluster purity |",
        "| --- | --- | --- |",
        "| "
        + " | ".join(_fmt(q.get(k)) for k in ("box_precision50", "agnostic_ap50", "cluster_purity"))
        + " |",
        "",
        f"Wall time: {s['wall_seconds']:.0f} s.",
        "",
        "![heatmaps](av/inference/heatmaps.png)",
        "",
        "![detections](detector/naming/detections.png)",
        "",
        "![per-class AP50](detector/naming/selfsup_ap50.png)",
        "",
    ]
    return "\n".join(lines)
