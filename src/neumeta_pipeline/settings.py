"""Kedro project settings."""

import warnings

from kedro.config import OmegaConfigLoader

from .hooks import RunIsolationHook, SummaryHook, TrackingHook, ValidateParametersHook

# Pluggy calls the last registered hook first: parameters are validated before isolation reads them.
HOOKS = (SummaryHook(), TrackingHook(), RunIsolationHook(), ValidateParametersHook())
CONFIG_LOADER_CLASS = OmegaConfigLoader

# Kedro's config loader calls an OmegaConf function that newer OmegaConf deprecates; the warning
# says nothing a user can act on and buries the run's own messages.
warnings.filterwarnings("ignore", message=r"register_new_resolver\(\) is deprecated", category=UserWarning)
