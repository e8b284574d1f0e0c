"""A plain `pip install .` (not editable) carries everything the gateway needs at run time."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from tests.conftest import gateway_subprocess_env

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_ships_code_migrations_templates_and_config_and_runs_from_elsewhere(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "-w", str(tmp_path / "dist"), str(ROOT)], check=True, timeout=300, capture_output=True)
    [wheel] = list((tmp_path / "dist").glob("*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {p.relative_to(ROOT).as_posix() for folder in ("gateway", "webhooks")
                for p in (ROOT / folder).rglob("*.py")}
    assert expected <= names, f"missing from the wheel (add the package to pyproject): {sorted(expected - names)}"
    assert "gateway/config_files/example.env" in names
    assert "gateway/store/migrations/script.py.mako" in names
    templates = {p.relative_to(ROOT / "templates").as_posix() for p in (ROOT / "templates").rglob("*") if p.is_file()}
    assert {f"gateway/templates/{t}" for t in templates} <= names

    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site),
                    str(wheel)], check=True, timeout=300, capture_output=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = gateway_subprocess_env()
    env.update(PYTHONPATH=str(site), GATEWAY_DATA_DIR=str(elsewhere / "data"), GATEWAY_MAIL_DOMAIN="mail.test")
    code = ("import sys, gateway; assert gateway.__file__.startswith(sys.argv[1]), gateway.__file__; "
            "from gateway.cli import main; sys.exit(main(sys.argv[2:]))")
    out = subprocess.run([sys.executable, "-c", code, str(site), "studio", "add", "inkwell", "--name", "Inkwell",
                          "--owner-email", "owner@inkwell.example", "--json"],
                         cwd=elsewhere, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    created = json.loads(out.stdout)
    assert created["slug"] == "inkwell" and created["address"] == "inkwell@mail.test"
    assert created["token"].startswith("gw_")
    assert (elsewhere / "data" / "gateway.db").exists()


def test_studio_add_refuses_bad_input_and_duplicates(tmp_path: Path) -> None:
    env = gateway_subprocess_env()
    env.update(GATEWAY_DATA_DIR=str(tmp_path / "data"), GATEWAY_MAIL_DOMAIN="mail.test")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "gateway.cli", "studio", "add", *args], cwd=tmp_path,
                              env=env, capture_output=True, text=True, timeout=120)

    assert run("Bad Slug!", "--name", "X", "--owner-email", "o@x.example").returncode == 1
    assert run("ink", "--name", "X\r\nBcc: evil@x", "--owner-email", "o@x.example").returncode == 1
    assert run("ink", "--name", "X", "--owner-email", "o@x.example").returncode == 0
    again = run("ink", "--name", "X", "--owner-email", "o@x.example")
    assert again.returncode == 1 and "exists already" in again.stderr
    bad_setting = subprocess.run([sys.executable, "-m", "gateway.cli", "migrate"], cwd=tmp_path,
                                 env={**env, "GATEWAY_SECRET_KEY": "changeme"}, capture_output=True, text=True,
                                 timeout=120)
    assert bad_setting.returncode == 2 and "GATEWAY_SECRET_KEY" in bad_setting.stderr


def test_every_package_of_the_tree_is_listed_for_the_wheel() -> None:
    """pyproject lists packages by hand (templates/ and config/ are mapped into gateway): each
    stage's subpackage must be on that list, or a plain `pip install .` would lack it."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {init.parent.relative_to(ROOT).as_posix().replace("/", ".")
             for folder in ("gateway", "webhooks") for init in (ROOT / folder).rglob("__init__.py")}
    assert found <= listed, f"add to [tool.setuptools] packages: {sorted(found - listed)}"
    for stage in ("gateway.mail", "gateway.store", "gateway.inbound", "gateway.inbound.mime", "gateway.outbound",
                  "gateway.access", "gateway.inbox", "gateway.lifecycle", "gateway.backup", "gateway.cli"):
        assert stage in found, stage


def _project() -> dict:
    import tomllib

    with open(ROOT / "pyproject.toml", "rb") as fh:
        return tomllib.load(fh)["project"]


def test_requires_python_states_what_the_suite_runs_on() -> None:
    """requires-python promises only versions the suite has run on: the running interpreter
    is inside it, and the next minor version (not yet run) is outside it (issue 13)."""
    from packaging.specifiers import SpecifierSet

    spec = SpecifierSet(_project()["requires-python"])
    running = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert running in spec
    assert f"{sys.version_info.major}.{sys.version_info.minor + 1}" not in spec
    assert f"Programming Language :: Python :: {running}" in _project()["classifiers"]


def test_stdlib_backports_for_python_313_are_declared_under_a_marker() -> None:
    """flanker imports imghdr, and webob under it cgi; Python 3.13 removed both (PEP 594).
    The PyPI backports are declared for 3.13 and later only, where they are needed."""
    from packaging.requirements import Requirement

    requirements = {r.name: r for r in map(Requirement, _project()["dependencies"])}
    for name in ("standard-imghdr", "legacy-cgi"):
        assert name in requirements, name
        marker = requirements[name].marker
        assert marker is not None, name
        assert marker.evaluate({"python_version": "3.13"})
        assert not marker.evaluate({"python_version": "3.12"})
