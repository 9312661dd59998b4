"""Sinkhorn-Knopp self-labelling and the label-recomputation schedule."""

from avdet.selflabel.sinkhorn import sinkhorn_knopp

__all__ = ["sinkhorn_knopp"]
