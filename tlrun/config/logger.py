"""The ``logger=`` group: experiment trackers a run reports to, beside its own run folder.

``logger=none`` (default) reports nowhere; ``logger=tensorboard``, ``logger=mlflow`` or a list
(``logger=[tensorboard,mlflow]``) switch trackers on: each option's YAML fills its own sub-node, so
several compose side by side (lightning-hydra-template's ``many_loggers``). Light module (no tracker
imports): ``tlrun --help`` reads it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from tlrun.config.fields import path_field


@dataclass
class TensorBoardConfig:
    dir: str = field(default="tensorboard", metadata={
        "help": "Event-file folder, relative to the run folder (tensorboard --logdir multirun/... compares a sweep)"})


@dataclass
class MlflowConfig:
    tracking_uri: Optional[str] = field(default=None, metadata={
        "help": "An http(s):// MLflow server or a database URI (sqlite:////abs/mlflow.db); null = an embedded "
                "sqlite store in <cwd>/outputs/mlflow/"})
    experiment_name: str = field(default="tlrun", metadata={"help": "MLflow experiment the runs go to"})


@dataclass
class LoggerConfig:
    tensorboard: Optional[TensorBoardConfig] = field(default=None, metadata={
        "help": "logger=tensorboard: event files in <run>/<logger.tensorboard.dir> (default tensorboard); "
                "docs/tracking.md"})
    mlflow: Optional[MlflowConfig] = field(default=None, metadata={
        "help": "logger=mlflow: one MLflow run per tlrun run, continued on resume; keys logger.mlflow.tracking_uri "
                "(null = sqlite store in outputs/mlflow/, or http(s)://host:port) and logger.mlflow.experiment_name "
                "(default tlrun)"})
    log_model: bool = field(default=False, metadata={
        "help": "Also upload the model file (ft_model.pt) to MLflow as an artefact"})
    fail_on_error: bool = field(default=True, metadata={
        "help": "A tracker that cannot be reached stops the run before training (false: a warning, the run goes on); "
                "a tracker failing mid-run never stops it"})


# The trackers a logger= option switches on: the sub-node each fills and its schema.
TRACKERS = {"tensorboard": TensorBoardConfig, "mlflow": MlflowConfig}
