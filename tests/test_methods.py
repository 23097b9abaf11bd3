"""Methods as plug-ins: every registered method's YAML agrees with its schema, per-method keys are
refused under another method, an unknown method is an error naming the registered ones."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import assert_one_line_error, run_tlrun
from tlrun.cli import compose_config
from tlrun.config import register_configs, validate_config
from tlrun.errors import ConfigError
from tlrun.methods import ADAPTATION, DISTILL, REGISTRIES


def _default(f: dataclasses.Field):
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default  # type: ignore[misc]


@pytest.mark.parametrize("group, method", [(g, m) for g, r in REGISTRIES.items() for m in r.names()])
def test_each_methods_yaml_holds_exactly_its_schemas_keys_and_defaults(group: str, method: str):
    register_configs()
    node = OmegaConf.to_container(compose_config([f"{group}={method}"])[group])
    schema = REGISTRIES[group].spec(method).config
    fields = {f.name: _default(f) for f in dataclasses.fields(schema)}
    assert set(node) == set(fields), f"conf/{group}/{method}.yaml and {schema.__name__} list different keys"
    assert node.pop("method") == method
    fields.pop("method")
    assert node == fields, f"conf/{group}/{method}.yaml and {schema.__name__} disagree on defaults"


def test_registries_list_the_methods_and_their_pipelines():
    assert {"none", "dann", "mmd"} <= set(ADAPTATION.names())
    assert {"none", "kd", "meta"} <= set(DISTILL.names())
    assert {ADAPTATION.spec(m).pipeline for m in ADAPTATION.names()} == {"adaptation"}
    assert (DISTILL.spec("none").pipeline, DISTILL.spec("kd").pipeline, DISTILL.spec("meta").pipeline) == \
        ("finetune", "kd", "meta")


def test_an_unknown_method_names_the_registered_ones():
    with pytest.raises(ConfigError) as error:
        ADAPTATION.spec("dannn")
    message = str(error.value)
    assert "unknown adaptation method 'dannn'" in message and "did you mean 'dann'?" in message
    assert "registered methods: none, " in message and "dann" in message and "mmd" in message


def test_a_method_registered_twice_is_refused():
    from tlrun.methods import MethodRegistry

    registry = MethodRegistry("adaptation", lambda: object, "adaptation")
    registry.register("x", object)(int)
    with pytest.raises(ValueError, match="registered twice"):
        registry.register("x", object)(str)


def test_validation_uses_the_selected_methods_schema():
    register_configs()
    cfg = compose_config(["adaptation=mmd", "+adaptation.discriminator_width=8"])
    with pytest.raises(ConfigError, match=r"unknown key 'adaptation.discriminator_width'.*valid keys in "
                                          r"adaptation=mmd: .*mmd_multipliers"):
        validate_config(cfg)
    with pytest.raises(ConfigError, match="invalid value for adaptation.discriminator_width: 0; it must be >= 1"):
        validate_config(compose_config(["adaptation=dann", "adaptation.discriminator_width=0"]))


@pytest.mark.parametrize("args, needles", [
    (["adaptation=mmd", "adaptation.discriminator_width=8"],
     ["unknown key 'adaptation.discriminator_width'", "valid keys in adaptation=mmd:", "mmd_estimator"]),
    (["-m", "adaptation=dann,mmd", "adaptation.discriminator_width=8"], ["valid keys in adaptation=mmd:"]),
    (["distill=kd", "distill.n_way=3"], ["unknown key 'distill.n_way'", "valid keys in distill=kd:", "temperature"]),
    (["adaptation=dann", "adaptation.method=corall", "data.target=digits_m"],
     ["unknown adaptation method 'corall'", "registered methods: none,"]),
    (["adaptation=_alignment"], ["unknown option adaptation=_alignment", "valid options:", "dann"]),
])
def test_method_errors_are_one_line_and_leave_no_run_folder(tmp_path: Path, args: list[str], needles: list[str]):
    result = run_tlrun(args, tmp_path)
    assert_one_line_error(result, *needles)
    assert result.returncode == 2
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "multirun").exists()
