"""Naming clusters: Hungarian cluster-to-class matching from a handful of labels."""
