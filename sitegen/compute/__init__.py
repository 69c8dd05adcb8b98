"""Stage 2 of the pipeline: one FeatureData per feature, into the on-disk cache."""

from sitegen.compute.engine import build_feature_cache

__all__ = ["build_feature_cache"]
