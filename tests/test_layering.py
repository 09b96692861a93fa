"""Layering: the library never imports Airflow nor its own demo; the CLI finds the demo through an entry point.

Read from the source (AST), so an import inside a function counts as much as one at the top.
"""

from __future__ import annotations

import argparse
import ast
import sys
import tomllib
from pathlib import Path

import pytest

from theseus_ops import cli

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = ROOT / "theseus_ops"
DEMO = LIBRARY / "demo"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in the file, relative ones resolved."""
    package = _module_name(path).split(".") if path.name == "__init__.py" else _module_name(path).split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([*package[:len(package) - node.level + 1], *([base] if base else [])])
            # `from theseus_ops import demo` imports theseus_ops.demo: name each imported name too
            found += [(node.lineno, base), *((node.lineno, f"{base}.{alias.name}") for alias in node.names)]
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr == "import_module" and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)):
            found.append((node.lineno, node.args[0].value))
    return found


def _library_files() -> list[Path]:
    return sorted(p for p in LIBRARY.rglob("*.py") if DEMO not in p.parents)


def _hits(prefix: str) -> list[str]:
    return [f"{p.relative_to(ROOT)}:{line}: {name}" for p in _library_files() for line, name in _imports(p)
            if name == prefix or name.startswith(prefix + ".")]


def test_the_library_outside_the_demo_never_imports_the_demo():
    assert (LIBRARY / "cli.py") in _library_files()
    assert _hits("theseus_ops.demo") == []


def test_the_library_never_imports_airflow():
    assert _hits("airflow") == []


def test_the_checker_sees_every_form_of_import(tmp_path, monkeypatch):
    pkg = tmp_path / "theseus_ops" / "sub"
    pkg.mkdir(parents=True)
    (pkg / "m.py").write_text("import theseus_ops.demo.x\nfrom theseus_ops import demo\nfrom ..demo import cli\n"
                              "def f():\n    import importlib\n    importlib.import_module('theseus_ops.demo.cli')\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    names = {name for _line, name in _imports(pkg / "m.py")}
    assert {"theseus_ops.demo.x", "theseus_ops.demo", "theseus_ops.demo.cli"} <= names


def test_pyproject_declares_the_demo_subcommands_as_an_entry_point():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = project["entry-points"][cli.CLI_GROUP]
    assert declared == {"demo": "theseus_ops.demo.cli"}
    from theseus_ops.demo import cli as demo_cli

    assert callable(demo_cli.add_subcommands) and callable(demo_cli.run)


def _commands(parser: argparse.ArgumentParser) -> set[str]:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return set(sub.choices)


def test_the_installed_metadata_gives_the_cli_the_demo_subcommands():
    """With the package's metadata current (pip install -e . after pyproject.toml changed, as make does)."""
    names = {ep.name for ep in cli.metadata.entry_points(group=cli.CLI_GROUP)}
    assert "demo" in names, (f"no entry point 'demo' in group {cli.CLI_GROUP}: the installed package metadata "
                             "is older than pyproject.toml (reinstall: make venv, or pip install --no-deps -e .)")
    assert {"prepare", "transport", "apply", "inspect", "catalog", "evaluate", "bench"} <= _commands(cli.build_parser())


class _Provider:
    """A third-party subcommand provider, as an entry point would name it."""

    @staticmethod
    def add_subcommands(sub) -> None:
        sub.add_parser("hello").add_argument("--name", default="world")

    @staticmethod
    def run(args) -> int | None:
        if args.command != "hello":
            return None
        print(f"hello {args.name}")
        return 0


PROVIDER = _Provider()


def _install_provider(tmp_path: Path, monkeypatch, target: str) -> None:
    site = tmp_path / "site"
    dist = site / "theseus_hello-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: theseus-hello\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[{cli.CLI_GROUP}]\nhello = {target}\n")
    monkeypatch.syspath_prepend(str(site))


def test_an_entry_point_adds_and_runs_its_subcommands(tmp_path, monkeypatch, capsys):
    _install_provider(tmp_path, monkeypatch, "tests.test_layering:PROVIDER")
    assert "hello" in _commands(cli.build_parser())
    assert cli.main(["hello", "--name", "there"]) == 0
    assert capsys.readouterr().out == "hello there\n"
    assert cli.main(["inspect", str(tmp_path / "missing")]) == 2  # other commands still go where they belong


def test_a_provider_that_does_not_load_is_skipped_with_one_warning(tmp_path, monkeypatch, capsys):
    _install_provider(tmp_path, monkeypatch, "no_such_module_xyz:PROVIDER")
    providers = cli.subcommand_providers()
    assert "warning: subcommands hello (no_such_module_xyz:PROVIDER) not loaded" in capsys.readouterr().err
    assert "catalog" in _commands(cli.build_parser(providers))
    with pytest.raises(SystemExit):
        cli.build_parser(providers).parse_args(["hello"])
