"""stub"""
from ..registry import Registry
DATASETS = Registry("dataset")
DataBundle = build_datasets = long_tail_counts = shot_groups = None
