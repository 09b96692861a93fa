"""A method is a package registered once: the CLI, the API and the workflow offer it from the registry.

A toy method ("toy-scale": τ_B = factor · τ_A, defined only between identical shapes) is registered
for a test and removed again; nothing else is edited, and it appears in ``transport --help``, runs
through ``api.transport`` and the CLI, is listed by the workflow and the DAG's Params, and is ruled
*not applicable* from its capabilities before any work. A folder with ``config.py`` and
``method.py`` is found on its own.
"""

from __future__ import annotations

import math
import sys
import textwrap
from dataclasses import dataclass

import pytest
import torch
from safetensors.torch import load_file

from tests import tiny
from theseus_ops import api
from theseus_ops import cli as cli_module
from theseus_ops.config import CalibrationSpec, PrepareConfig, TransportConfig
from theseus_ops.errors import InputError, NotApplicableError
from theseus_ops.evaluation import NotApplicable
from theseus_ops.io.models import inspect_model_dir
from theseus_ops.transport import methods
from theseus_ops.transport.engine import ParamRecord
from theseus_ops.transport.methods import Capabilities, Method, get_method, method_names, register_method, registered
from theseus_ops.transport.methods.base import MethodOutput
from theseus_ops.transport.options import option
from theseus_ops.transport.task_vector import TaskVector
from theseus_ops.workflow import Pair, WorkflowConfig, methods_param
from theseus_ops.workflow.porting import PortInputs
from theseus_ops.workflow.release import transported_delta

TOY = "toy-scale"


@dataclass(frozen=True)
class ToyConfig:
    factor: float = option(1.0, "multiply every entry of τ by this positive number")

    def __post_init__(self) -> None:
        if not (isinstance(self.factor, int | float) and math.isfinite(self.factor) and self.factor > 0):
            raise InputError(f"toy-scale factor must be a positive number, got {self.factor!r}")


class ToyScale(Method):
    """Scales the vector itself (a result, not maps); counts its runs, so a test sees it was never run."""

    def __init__(self) -> None:
        self.runs = 0

    def run(self, ctx, config: ToyConfig) -> MethodOutput:
        self.runs += 1
        tv = ctx.task_vector
        names = [p.source_name for p in ctx.plans if not p.reason]
        out = TaskVector("full", deltas={n: tv.deltas[n] * config.factor for n in names})
        records = [ParamRecord(p.source_name, "transported", "toy-scale", [p.targets[0].name],
                               tv.norm(p.source_name), out.norm(p.source_name), []) for p in ctx.plans]
        return MethodOutput(result=out, records=records)


@pytest.fixture
def toy():
    impl = ToyScale()
    with registered(TOY, ToyConfig, impl, summary="scale the source vector (a test's toy)",
                    capabilities=Capabilities(same_shapes_only=True)) as info:
        yield info
    assert TOY not in method_names()


def _help(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as exited:
        cli_module.main([*argv, "--help"])
    assert exited.value.code == 0
    return capsys.readouterr().out


def test_a_registered_method_is_offered_by_the_cli_and_the_workflow(toy, capsys, tmp_path):
    text = _help(capsys, "transport")
    assert TOY in text and "scale the source vector" in text
    assert "--toy-scale-factor" in text and "multiply every entry of τ" in text
    args = cli_module.build_parser().parse_args(
        ["transport", "--source-base", "a", "--target-base", "b", "--task-vector", "t", "--method", TOY,
         "--toy-scale-factor", "2.5", "--out", "o"])
    assert args.method == TOY and args.toy_scale_factor == 2.5
    assert TOY not in _help(capsys, "prepare")  # prepare offers methods that estimate maps only
    param = methods_param()
    assert TOY in param["items"]["enum"] and "scale the source vector" in param["description"]
    assert TOY in WorkflowConfig(work_dir=tmp_path).methods
    assert WorkflowConfig(work_dir=tmp_path, methods=(TOY, "pad")).methods == (TOY, "pad")


def test_a_registered_method_runs_through_the_api_and_the_cli(toy, tmp_path, capsys):
    case = tiny.Case(tmp_path, "llama", "identity")
    cfg = TransportConfig(str(case.source), str(case.target), TOY, task_vector=str(case.task_vector),
                          method_config={"factor": 2.0})
    report = api.transport(cfg, tmp_path / "api.safetensors")
    assert report["method"] == TOY and report["options"]["toy_scale_factor"] == 2.0
    assert report["summary"]["transported"] == len(case.delta)
    out = load_file(str(tmp_path / "api.safetensors"))
    assert set(out) == set(case.delta)
    assert all(torch.allclose(out[n].float(), 2.0 * case.delta[n].float()) for n in out)

    argv = ["transport", "--source-base", case.source, "--target-base", case.target, "--task-vector",
            case.task_vector, "--method", TOY, "--toy-scale-factor", "3", "--out", tmp_path / "cli.safetensors"]
    assert cli_module.main([str(a) for a in argv]) == 0
    out = load_file(str(tmp_path / "cli.safetensors"))
    assert all(torch.allclose(out[n].float(), 3.0 * case.delta[n].float()) for n in out)

    bad = [str(a) for a in argv[:-2]] + ["--toy-scale-factor", "-1", "--out", str(tmp_path / "bad.safetensors")]
    capsys.readouterr()
    assert cli_module.main(bad) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(cli_module.PREFIX) and "factor must be a positive number" in err[-1]
    assert not (tmp_path / "bad.safetensors").exists()


def test_the_method_config_is_validated_and_a_real_error_stays_an_error(toy, tmp_path):
    with pytest.raises(InputError, match="positive number") as caught:
        TransportConfig("a", "b", TOY, task_vector="t", method_config={"factor": float("nan")})
    assert not isinstance(caught.value, NotApplicableError)
    with pytest.raises(InputError, match="no option 'fcator'"):
        TransportConfig("a", "b", TOY, task_vector="t", method_config={"fcator": 2.0})
    with pytest.raises(InputError, match="takes a ToyConfig"):
        TransportConfig("a", "b", TOY, task_vector="t", method_config=object())
    with pytest.raises(InputError, match="prepare makes alignments for theseus or theseus-hybrid or "
                                         "theseus-data-free, not toy"):
        PrepareConfig("a", "b", method=TOY)


def test_not_applicable_comes_from_the_capabilities_before_any_work(toy, tmp_path):
    case = tiny.Case(tmp_path, "llama", "widening")  # the target's MLP is wider: not identical shapes
    out = tmp_path / "out.safetensors"
    with pytest.raises(NotApplicableError, match=f"{TOY} needs identical shapes"):
        api.transport(TransportConfig(str(case.source), str(case.target), TOY, task_vector=str(case.task_vector)),
                      out)
    assert toy.impl.runs == 0 and not out.exists()
    side = {name: {"dir": str(d), "version": v, "sha256": inspect_model_dir(d).sha256()}
            for name, d, v in (("source", case.source, "1"), ("target", case.target, "2"))}
    pair = Pair.from_json({"family": "tiny", **side})
    inputs = PortInputs(WorkflowConfig(work_dir=tmp_path / "work"), pair, case.task_vector, CalibrationSpec(), "")
    result = transported_delta(inputs, TOY, {})
    assert isinstance(result, NotApplicable) and "identical shapes" in result.reason and toy.impl.runs == 0


def test_a_name_is_registered_once(toy):
    with pytest.raises(ValueError, match=r"'pad' is already registered.*pick another name"):
        register_method("pad", ToyConfig, ToyScale(), summary="again", capabilities=Capabilities())
    with pytest.raises(ValueError, match="already registered"), registered(
            TOY, ToyConfig, ToyScale(), summary="again", capabilities=Capabilities()):
        pass
    assert get_method(TOY) is toy  # the refused second registration left the first in place


def test_removed_after_the_test():
    assert TOY not in method_names()
    with pytest.raises(InputError, match="unknown method 'toy-scale'"):
        get_method(TOY)


def test_declarations_are_checked():
    with pytest.raises(ValueError, match="needs_labels implies needs_calibration"):
        Capabilities(needs_labels=True)

    @dataclass(frozen=True)
    class NoHelp:
        factor: float = 1.0

    with pytest.raises(TypeError, match="needs option"):
        register_method("toy-no-help", NoHelp, ToyScale(), summary="x", capabilities=Capabilities())
    assert "toy-no-help" not in method_names()


def test_every_shipped_method_is_a_folder_with_a_validated_config():
    expected = {"pad", "theseus", "theseus-data-free", "naive", "gradfix"}
    assert expected <= set(method_names())
    for name in expected:
        info = get_method(name)
        assert type(info.impl).__module__ == f"theseus_ops.transport.methods.{info.option_prefix}.method"
        assert info.config_cls.__module__ == f"theseus_ops.transport.methods.{info.option_prefix}.config"
        info.config_cls()  # the defaults are valid
    with pytest.raises(InputError, match="gradfix mode must be normal or force"):
        get_method("gradfix").config_cls(mode="sometimes")


def test_a_new_folder_with_two_files_is_discovered(tmp_path, monkeypatch):
    folder = tmp_path / "toy_folder"
    folder.mkdir()
    (folder / "config.py").write_text(textwrap.dedent('''
        from dataclasses import dataclass

        from theseus_ops.transport.options import option


        @dataclass(frozen=True)
        class ToyFolderConfig:
            steps: int = option(1, "how many steps")
    '''))
    (folder / "method.py").write_text(textwrap.dedent('''
        from theseus_ops.transport.methods import Capabilities, Method, register_method
        from theseus_ops.transport.methods.toy_folder.config import ToyFolderConfig

        register_method("toy-folder", ToyFolderConfig, Method(), summary="a folder's toy",
                        capabilities=Capabilities())
    '''))
    methods.discover()
    monkeypatch.setattr(methods, "__path__", [*methods.__path__, str(tmp_path)])
    monkeypatch.setattr(methods, "_DISCOVERED", False)
    try:
        methods.discover()
        assert "toy-folder" in method_names() and get_method("toy-folder").options()[0].help == "how many steps"
    finally:
        if "toy-folder" in methods._REGISTRY:
            methods.unregister_method("toy-folder")
        for module in [m for m in sys.modules if m.startswith("theseus_ops.transport.methods.toy_folder")]:
            del sys.modules[module]
