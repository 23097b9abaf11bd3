"""The run configuration: field builders (``fields``), the typed schema registered with Hydra
(``schema``), the base nodes of the method groups (``methods``; each method extends one in its own
module) and the validation of a composed config (``validate``). Light: no torch anywhere in here."""

from tlrun.config.fields import bounded, check_arg_ranges, check_range, choice, path_field, unbounded
from tlrun.config.methods import AdaptationBase, AlignmentBase, DistillBase, TeacherBase
from tlrun.config.schema import (GROUPS, METHOD_GROUPS, OVERLAY_GROUPS, SCHEMA_NAME, DataConfig, DeviceConfig,
                                 ModelConfig, TlrunConfig, random_augmentations, register_configs)
from tlrun.config.validate import (check_value, expand_paths, method_schema, numeric_fields_without_range,
                                   schema_field, validate_config)

__all__ = ["bounded", "check_arg_ranges", "check_range", "choice", "path_field", "unbounded", "AdaptationBase",
           "AlignmentBase", "DistillBase", "TeacherBase", "GROUPS", "METHOD_GROUPS", "OVERLAY_GROUPS", "SCHEMA_NAME",
           "DataConfig", "DeviceConfig", "ModelConfig", "TlrunConfig", "random_augmentations", "register_configs",
           "check_value", "expand_paths", "method_schema", "numeric_fields_without_range", "schema_field",
           "validate_config"]
