from .pipeline import BASELINES, create_pipeline

__all__ = ["BASELINES", "create_pipeline"]
