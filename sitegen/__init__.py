"""sitegen: static-site generator for interpretability dashboards.

Pipeline: ``sources`` (load model, dictionaries, dataset) -> ``compute``
(one FeatureData per feature) -> ``render`` (a static, offline site).
"""

__version__ = "0.1.0"
