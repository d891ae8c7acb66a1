"""Kedro project settings."""

from kedro.config import OmegaConfigLoader

from .hooks import ValidateParametersHook

HOOKS = (ValidateParametersHook(),)
CONFIG_LOADER_CLASS = OmegaConfigLoader
