"""Configuration: the run's YAML schema (pydantic), loaded and checked in one place."""

from __future__ import annotations

from autocompress.config.schema import (
    OBJECTIVE_KEYS,
    PROJECT_ROOT,
    DataConfig,
    ModelConfig,
    RunConfig,
    TrainConfig,
    dump_config,
    load_config,
    missing_runtime_package,
)

__all__ = ['DataConfig', 'ModelConfig', 'OBJECTIVE_KEYS', 'PROJECT_ROOT', 'RunConfig', 'TrainConfig', 'dump_config', 'load_config', 'missing_runtime_package']
