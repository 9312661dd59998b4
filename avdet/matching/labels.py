"""The handful of labels used to name clusters: a few labelled images per class, as COCO."""

from __future__ import annotations

import random

from avdet.data.coco import coco_index


def sample_labelled_images(gt: dict, per_class: int, seed: int = 0) -> dict:
    """A COCO subset with `per_class` images for every category (all boxes of those images).

    An image counts for a class when it holds a box of that class (a `sounding` one where the
    flag exists); images are drawn without replacement, seeded, so the same call gives the same
    subset. per_class <= 0 keeps every image.
    """
    images, anns_by_image, categories = coco_index(gt)
    if per_class <= 0:
        chosen = set(images)
    else:
        rng = random.Random(seed)
        chosen: set[int] = set()
        for category_id in sorted(categories):
            candidates = sorted(
                image_id
                for image_id, anns in anns_by_image.items()
                if any(a["category_id"] == category_id and a.get("sounding", True) for a in anns)
            )
            pool = [i for i in candidates if i not in chosen]
            chosen.update(rng.sample(pool, min(per_class, len(pool))))
    return {
        "info": {"description": f"{per_class} labelled image(s) per class (seed {seed})"},
        "images": [images[i] for i in sorted(chosen)],
        "annotations": [a for i in sorted(chosen) for a in anns_by_image.get(i, [])],
        "categories": list(gt["categories"]),
    }
