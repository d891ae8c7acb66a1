"""Kedro CLI hooks of the project (entry point ``kedro.cli_hooks`` in pyproject.toml).

Kedro imports CLI hooks before it loads plugins' commands, so this module is the one place early
enough to silence a warning that importing kedro-mlflow's commands makes MLflow print on every
`kedro` command: it asks for type hints on the `predict` of kedro-mlflow's own model class, which
this project never uses and a user cannot act on. MLflow raises it inside its own
`catch_warnings` block, so a warnings filter cannot reach it; Kedro routes warnings to the
``py.warnings`` logger, where a logging filter can.
"""

from __future__ import annotations

import logging


def _not_mlflow_predict_hint(record: logging.LogRecord) -> bool:
    return "Add type hints to the `predict` method" not in record.getMessage()


logging.getLogger("py.warnings").addFilter(_not_mlflow_predict_hint)


class _NoCliHooks:
    """Kedro asks an entry point for an object of hook implementations; the import is the point."""


hooks = _NoCliHooks()
