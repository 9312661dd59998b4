"""Every config key avdet knows, with its default. YAML files and `KEY VALUE` overrides change these.

A key that is not here is an error, so this file is also the reference of what can be set.
Sections: the run (TASK, OUTPUT_DIR, SEED), INPUT (decoding, spectrograms, image sizes), DATASETS,
DATALOADER, MODEL (AV towers, heads, detector), SELFLABEL, SOLVER, TEST, PSEUDO, DISTILL.
"""

from __future__ import annotations

from avdet.config.config import RENAMED_KEYS, CfgNode

_C = CfgNode()

# Which stage `tools/train_net.py` runs: "av" (stage 1), "detector" (stage 3), "distill" (plugin).
_C.TASK = "av"
_C.OUTPUT_DIR = "./output"
# Seed for Python, NumPy and torch; the same seed and config give the same run.
_C.SEED = 0
# "auto" picks CUDA when available, else CPU. Or "cpu", "cuda", "cuda:1".
_C.DEVICE = "auto"

# ---------------------------------------------------------------------------------------------
_C.INPUT = CfgNode()
# Which frame of a clip: seconds from the start, or a negative number for the middle.
_C.INPUT.FRAME_TIME = -1.0
# Frames given to the AV model, (height, width).
_C.INPUT.FRAME_SIZE = (120, 160)
# Horizontal flip of the frame during AV training.
_C.INPUT.RANDOM_FLIP = True
# AV training: a random window of the frame with its aspect ratio and an area fraction drawn from
# this range, resized to FRAME_SIZE (objects at new scales and places); (1.0, 1.0) = off.
_C.INPUT.RANDOM_CROP_AREA = (1.0, 1.0)

_C.INPUT.AUDIO = CfgNode()
# Every clip's audio is resampled to this rate and downmixed to mono.
_C.INPUT.AUDIO.SAMPLE_RATE = 16000
# Length of the audio window centred on the frame, in seconds.
_C.INPUT.AUDIO.SECONDS = 3.0
# Training only: the audio window's centre moves by up to this many seconds (0 = off).
_C.INPUT.AUDIO.TRAIN_JITTER = 0.5
# "logmel" (torch.stft + librosa mel filters) or "logstft" (LVS/EZ-VSL: n_fft 512, hop 238).
_C.INPUT.AUDIO.SPECTROGRAM = "logmel"
_C.INPUT.AUDIO.N_FFT = 512
_C.INPUT.AUDIO.HOP_LENGTH = 160
_C.INPUT.AUDIO.WIN_LENGTH = 400
_C.INPUT.AUDIO.N_MELS = 64
_C.INPUT.AUDIO.FMIN = 0.0
# 0 means sample_rate / 2.
_C.INPUT.AUDIO.FMAX = 0.0

# Detector input sizes (torchvision GeneralizedRCNNTransform): shorter side and its cap.
_C.INPUT.MIN_SIZE_TRAIN = (240,)
_C.INPUT.MAX_SIZE_TRAIN = 320
_C.INPUT.MIN_SIZE_TEST = 240
_C.INPUT.MAX_SIZE_TEST = 320

# ---------------------------------------------------------------------------------------------
_C.DATASETS = CfgNode()
# VGGSound layout: headerless CSV `youtube_id,start_seconds,label,split` and a video folder.
_C.DATASETS.CSV = ""
_C.DATASETS.VIDEO_DIR = ""
# Folder with instances_{split}.json (COCO) and vggss_{split}.json (VGG-SS) ground truth.
_C.DATASETS.ANNOTATION_DIR = ""
# Where prepare_clips writes frames, audio and manifest.jsonl ("" = OUTPUT_DIR/prepared).
_C.DATASETS.PREPARED_DIR = ""
_C.DATASETS.TRAIN = ("train",)
_C.DATASETS.TEST = ("test",)
# Optional few-label file for naming clusters (COCO JSON); "" = one train image per class.
_C.DATASETS.LABELS = ""
# Detector data: any COCO JSON plus the folder its file_names are relative to (for TASK distill,
# IMAGE_DIR is the labelled test set: an image folder per class or CIFAR pickles).
_C.DATASETS.TRAIN_JSON = ""
_C.DATASETS.TEST_JSON = ""
_C.DATASETS.IMAGE_DIR = ""

# The built-in synthetic dataset, generated on first use when DATASETS.CSV is empty.
_C.DATASETS.TOY = CfgNode()
_C.DATASETS.TOY.ROOT = "datasets/toy-av"
_C.DATASETS.TOY.PRESET = "small"
_C.DATASETS.TOY.NUM_CLASSES = 8
_C.DATASETS.TOY.SEED = 0

# ---------------------------------------------------------------------------------------------
_C.DATALOADER = CfgNode()
_C.DATALOADER.NUM_WORKERS = 2
# Worker processes for clip preparation (decoding); 0 = one per CPU core.
_C.DATALOADER.PREPARE_WORKERS = 0

# ---------------------------------------------------------------------------------------------
_C.MODEL = CfgNode()
# A full checkpoint to load (stage-1 AV model, detector or student), e.g. for --eval-only.
_C.MODEL.WEIGHTS = ""

_C.MODEL.VISUAL = CfgNode()
# torchvision ResNet: "resnet18", "resnet34", "resnet50".
_C.MODEL.VISUAL.ARCH = "resnet18"
# The last ResNet stage kept: "layer3" (stride 16) or "layer4" (stride 32).
_C.MODEL.VISUAL.LAST_STAGE = "layer3"
# Local checkpoint for the visual tower (a torchvision ResNet state dict or an avdet student).
_C.MODEL.VISUAL.WEIGHTS = ""
# How the visual feature map is pooled for the clustering head g_v: "mean", "max", or
# "heatmap" (where the clip's own pair score looks; g_v then also depends on the audio).
_C.MODEL.VISUAL.HEAD_POOLING = "mean"

_C.MODEL.AUDIO = CfgNode()
# ResNet-style 2-D CNN over the spectrogram: "resnet18" (one input channel) or "resnet10".
_C.MODEL.AUDIO.ARCH = "resnet18"
_C.MODEL.AUDIO.LAST_STAGE = "layer4"

# Shared embedding dimension of both towers (after the projections).
_C.MODEL.EMBED_DIM = 128
# How a heatmap becomes a pair score: "max" (multiple-instance), "mean", "lse" (log-sum-exp),
# "topk" (mean of the POOLING_TOPK fraction of highest locations).
_C.MODEL.POOLING = "max"
_C.MODEL.POOLING_TOPK = 0.1
# > 0: each pair's own heatmap, averaged over its lowest HARD_NEGATIVE_FRACTION of locations, is
# one more negative in L_NC (the hard negative of LVS, Chen et al. 2021): the frame's background
# must match its audio less than the sounding region does. 0 = off.
_C.MODEL.HARD_NEGATIVE_FRACTION = 0.0
# InfoNCE temperature; LEARN_TEMPERATURE makes it a trained parameter initialised here.
_C.MODEL.TEMPERATURE = 0.07
_C.MODEL.LEARN_TEMPERATURE = False
# Clustering heads: K outputs each, NUM_HEADS heads per modality (SeLaVi uses 10).
_C.MODEL.NUM_CLUSTERS = 8
_C.MODEL.NUM_HEADS = 1
_C.MODEL.HEAD_HIDDEN_DIM = 512
# total = LOSS_MIX * L_NC + (1 - LOSS_MIX) * L_clust
_C.MODEL.LOSS_MIX = 0.5

# Detector (stage 3), torchvision Faster R-CNN + FPN.
_C.MODEL.BACKBONE = CfgNode()
# "resnet18", "resnet50", "mobilenet_v3_large".
_C.MODEL.BACKBONE.NAME = "resnet18"
# Local weights: a torchvision backbone state dict, a stage-1 AV checkpoint or a student.
_C.MODEL.BACKBONE.WEIGHTS = ""
_C.MODEL.BACKBONE.TRAINABLE_LAYERS = 5
_C.MODEL.FPN = CfgNode()
_C.MODEL.FPN.OUT_CHANNELS = 256
_C.MODEL.ANCHOR_GENERATOR = CfgNode()
# One tuple of sizes per FPN level.
_C.MODEL.ANCHOR_GENERATOR.SIZES = ((16,), (32,), (64,), (128,), (256,))
_C.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS = (0.5, 1.0, 2.0)
_C.MODEL.RPN = CfgNode()
_C.MODEL.RPN.BATCH_SIZE_PER_IMAGE = 256
_C.MODEL.RPN.PRE_NMS_TOPK_TRAIN = 2000
_C.MODEL.RPN.POST_NMS_TOPK_TRAIN = 1000
_C.MODEL.RPN.PRE_NMS_TOPK_TEST = 1000
_C.MODEL.RPN.POST_NMS_TOPK_TEST = 1000
_C.MODEL.ROI_HEADS = CfgNode()
_C.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 512
_C.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.05
_C.MODEL.ROI_HEADS.NMS_THRESH_TEST = 0.5
_C.MODEL.ROI_HEADS.DETECTIONS_PER_IMAGE = 100

# ---------------------------------------------------------------------------------------------
_C.SELFLABEL = CfgNode()
# Sinkhorn-Knopp: P ** LAMBDA, solved in float64 until the marginal error (the largest relative
# deviation of a cluster's mass from its target) < TOL, or MAX_ITER passes.
_C.SELFLABEL.LAMBDA = 20.0
_C.SELFLABEL.TOL = 1e-2
_C.SELFLABEL.MAX_ITER = 2000
# Cluster marginal: "uniform" (equipartition) or "gaussian" (uniform perturbed by N(1, STD)).
_C.SELFLABEL.MARGINAL = "uniform"
_C.SELFLABEL.MARGINAL_STD = 0.1
# Iterations at which labels are recomputed: NUM_UPDATES times, denser early (power law).
_C.SELFLABEL.NUM_UPDATES = 10
_C.SELFLABEL.SCHEDULE_POWER = 2.0
# No clustering loss before this iteration (the embedding first needs some structure).
_C.SELFLABEL.START_ITER = 0

# ---------------------------------------------------------------------------------------------
_C.SOLVER = CfgNode()
# "sgd" or "adamw".
_C.SOLVER.OPTIMIZER = "sgd"
_C.SOLVER.BASE_LR = 0.01
_C.SOLVER.MOMENTUM = 0.9
_C.SOLVER.WEIGHT_DECAY = 1e-4
# Global batch size (divided across processes).
_C.SOLVER.IMS_PER_BATCH = 64
_C.SOLVER.MAX_ITER = 1000
# "cosine" or "steps" (multiply by GAMMA at each of STEPS).
_C.SOLVER.LR_SCHEDULER = "cosine"
_C.SOLVER.STEPS = ()
_C.SOLVER.GAMMA = 0.1
_C.SOLVER.WARMUP_ITERS = 50
_C.SOLVER.WARMUP_FACTOR = 0.001
# Clip the global gradient norm (0 = off).
_C.SOLVER.CLIP_GRAD_NORM = 0.0
# Mixed precision on CUDA (ignored on CPU).
_C.SOLVER.AMP = True
_C.SOLVER.CHECKPOINT_PERIOD = 500
# Log metrics every this many iterations.
_C.SOLVER.LOG_PERIOD = 20

# ---------------------------------------------------------------------------------------------
_C.TEST = CfgNode()
# Evaluate every EVAL_PERIOD iterations (0 = only at the end).
_C.TEST.EVAL_PERIOD = 0
_C.TEST.IMS_PER_BATCH = 64
# Localisation protocol: heatmap resized to HEATMAP_SIZE, thresholded by CIOU_THRESHOLD mode:
# "median" (VGG-SS), "fixed" (CIOU_FIXED_VALUE on the min-max map), "adaptive" (GT pixel count).
_C.TEST.HEATMAP_SIZE = 224
_C.TEST.CIOU_THRESHOLD = "median"
_C.TEST.CIOU_FIXED_VALUE = 0.5
# The pointing game looks up each heatmap's maximum with the map placed on the model's input
# where its cells look (cell m of a stride-s map at pixel s * m); the protocol's corner-aligned
# resize (kept for cIoU and AUC, and reported as pointing_corner_aligned) stretches a coarse map
# by up to s - 1 pixels (avdet/evaluation/localization.py). False: the protocol's resize only.
_C.TEST.POINTING_ON_INPUT = True
# Heatmap test-time augmentation (stage-1 evaluation and pseudo-boxes): each heatmap is
# the mean of the maps of the frame resized by each of SCALES (of INPUT.FRAME_SIZE) and, with
# FLIP, of their mirror images, each sampled where the base map's cells look
# (avdet/models/heatmap_aug.py). Cluster ids are those of the frame as it is.
_C.TEST.HEATMAP_AUG = CfgNode()
_C.TEST.HEATMAP_AUG.ENABLED = False
_C.TEST.HEATMAP_AUG.SCALES = (1.0,)
_C.TEST.HEATMAP_AUG.FLIP = True
# Gaussian smoothing of those heatmaps (after the augmentation), sigma in cells of the map;
# 0 = off. A maximum on one cell of clutter is flattened, one on an object a few cells wide is
# not (avdet/models/heatmap_aug.py).
_C.TEST.HEATMAP_SMOOTH = 0.0
# Heatmap overlays drawn into OUTPUT_DIR/inference/.
_C.TEST.NUM_VIS = 16

# ---------------------------------------------------------------------------------------------
_C.PSEUDO = CfgNode()
# Threshold at BETA * max(H) + (1 - BETA) * mean(H).
_C.PSEUDO.BETA = 0.5
# Up to MAX_BOXES connected components whose area is >= MIN_AREA_FRAC of the largest one.
_C.PSEUDO.MAX_BOXES = 1
_C.PSEUDO.MIN_AREA_FRAC = 0.5
# Boxes smaller than this many pixels on either side (original image) are dropped.
_C.PSEUDO.MIN_BOX_SIZE = 4
# Drop the clips whose pair score is below this percentile (0 = keep all).
_C.PSEUDO.SCORE_PERCENTILE = 0.0
# Frames with no pseudo-box stay in the detector's training set as negatives.
_C.PSEUDO.KEEP_NEGATIVES = True
# The training frames are shown to the AV model at this multiple of INPUT.FRAME_SIZE for the
# pseudo-boxes' heatmaps: a finer map gives tighter boxes (toy set, 1.5: 77.6% -> 82.1% of the
# boxes hit; a detector trained 3x the toy schedule on them +3.5 and +7.0 mAP@0.5 over two seeds,
# docs/pseudo_labels.md), at 1.5^2 x the compute of this stage. 1 = the training size.
_C.PSEUDO.FRAME_SCALE = 1.0

# ---------------------------------------------------------------------------------------------
_C.DISTILL = CfgNode()
# The one source image of the patch set.
_C.DISTILL.SOURCE_IMAGE = ""
_C.DISTILL.NUM_PATCHES = 50000
_C.DISTILL.PATCH_SIZE = 32
# KL(teacher/T || student/T).
_C.DISTILL.TEMPERATURE = 8.0
# Teacher signal: "soft" (full outputs), "topk" (renormalised top-k), "argmax" (one-hot).
_C.DISTILL.SIGNAL = "soft"
_C.DISTILL.TOPK = 5
# Beta(alpha, alpha) for CutMix and MixUp (0 = off); one of them is drawn per batch.
_C.DISTILL.CUTMIX_ALPHA = 0.25
_C.DISTILL.MIXUP_ALPHA = 0.0
_C.DISTILL.TEACHER = CfgNode()
_C.DISTILL.TEACHER.ARCH = "resnet18"
_C.DISTILL.TEACHER.WEIGHTS = ""
# Iterations to train the teacher when TEACHER.WEIGHTS is empty (0 = SOLVER.MAX_ITER).
_C.DISTILL.TEACHER.MAX_ITER = 0
_C.DISTILL.STUDENT = CfgNode()
_C.DISTILL.STUDENT.ARCH = "resnet18"
_C.DISTILL.NUM_CLASSES = 8
# Also distil from random-noise images and from one flat-colour image (the paper's controls).
_C.DISTILL.CONTROLS = True
# Compress the teacher with patches as the only data: any of "prune", "int8".
_C.DISTILL.COMPRESS = ()
_C.DISTILL.PRUNE_AMOUNT = 0.5

# ---------------------------------------------------------------------------------------------
# tools/run_pipeline.py: the whole method in one run. The pipeline config holds what the stages
# share (DATASETS, SEED, DEVICE, DATALOADER, MODEL.NUM_CLUSTERS, PSEUDO, TEST.CIOU_*,
# TEST.HEATMAP_SIZE and TEST.POINTING_ON_INPUT), copied into each stage's config; the stages'
# own training settings live in the stage configs named here (paths relative to the pipeline
# config's folder, or the current one), and *_OPTS override them: e.g.
# PIPELINE.AV_OPTS "('SOLVER.MAX_ITER', '100')".
_C.PIPELINE = CfgNode()
_C.PIPELINE.AV_CONFIG = "configs/toy/av.yaml"
_C.PIPELINE.DETECTOR_CONFIG = "configs/toy/detector.yaml"
_C.PIPELINE.AV_OPTS = ()
_C.PIPELINE.DETECTOR_OPTS = ()
# Initialise every detector's backbone (ours and the baselines alike) from the stage-1 visual
# tower: self-supervised pretraining, no labels involved.
_C.PIPELINE.BACKBONE_FROM_AV = True
# Labelled images per class used to name the clusters (DATASETS.LABELS overrides with a file).
_C.PIPELINE.LABELS_PER_CLASS = 1
# Also report the named detector's mAP@0.5 with these many labels per class (0 = every train image).
_C.PIPELINE.LABEL_SWEEP = (1, 2, 5)
# Where the naming votes (matching.hungarian, cluster x class) come from, any of:
# "boxes": the detector's ROI head classifies each labelled box (a full distribution over the
# clusters per box, so one labelled image per class can name every cluster); "pseudo": the
# pseudo-boxes of labelled images that are pseudo-labelled training frames (stage 1's own
# cluster ids); "detections": the detector's boxes overlapping a labelled box, score-weighted.
_C.PIPELINE.NAMING_VOTES = ("boxes", "pseudo")
RENAMED_KEYS["PIPELINE.NAME_WITH_PSEUDO"] = (
    "NAMING_VOTES",
    lambda with_pseudo: ("detections", "pseudo") if with_pseudo else ("detections",),
)
# Unmatched clusters: "drop" their detections, or keep them as "unknown".
_C.PIPELINE.KEEP_UNMATCHED = "drop"
# Detectors trained beside the self-supervised one, same settings: "supervised" (GT boxes and
# classes), "gt_classes" (pseudo-boxes, GT classes), "agnostic" (pseudo-boxes, one class).
_C.PIPELINE.BASELINES = ("supervised", "gt_classes", "agnostic")


def get_cfg() -> CfgNode:
    """A fresh, mutable copy of the defaults."""
    return _C.clone()
