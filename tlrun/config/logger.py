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
        "help": "An http(s):// MLflow server or a database URI; null = an embedded sqlite store in outputs/mlflow/"})
    experiment_name: str = field(default="tlrun", metadata={"help": "MLflow experiment the runs go to"})


@dataclass
class LoggerConfig:
    tensorboard: Optional[TensorBoardConfig] = field(default=None, metadata={
        "help": "logger=tensorboard: TensorBoard event files in the run folder"})
    mlflow: Optional[MlflowConfig] = field(default=None, metadata={
        "help": "logger=mlflow: one MLflow run per tlrun run (a resumed run continues it)"})
    log_model: bool = field(default=False, metadata={
        "help": "Also upload the model file (ft_model.pt) as an artefact"})
    fail_on_error: bool = field(default=True, metadata={
        "help": "A tracker that cannot be reached stops the run before training (false: a warning, the run goes on)"})
