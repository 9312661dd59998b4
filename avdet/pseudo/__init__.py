"""Heatmaps to pseudo-boxes, and export of the pseudo-labelled COCO set."""
