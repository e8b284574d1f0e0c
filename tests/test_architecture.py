"""The layers of ARCHITECTURE.md hold: import-linter's contracts (pyproject.toml) pass on the
tree, and they are not decoration: a domain module that imports an edge breaks them."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint(root: Path) -> subprocess.CompletedProcess[str]:
    """import-linter over the packages under `root`, with the project's own contracts."""
    return subprocess.run([str(LINT_IMPORTS), "--no-cache", str(ROOT / "pyproject.toml")], cwd=root,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(root)},
                          capture_output=True, text=True, timeout=120)


def copy_tree(tmp_path: Path) -> Path:
    for package in ("gateway", "webhooks"):
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def test_the_layer_contracts_are_kept() -> None:
    done = lint(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 kept, 0 broken" in done.stdout


def test_a_domain_module_importing_the_api_breaks_them(tmp_path: Path) -> None:
    root = copy_tree(tmp_path)
    (root / "gateway" / "inbound" / "shortcut.py").write_text(
        '"""A module that reaches up into an edge."""\nfrom gateway.api.app import create_app  # noqa: F401\n')
    done = lint(root)
    assert done.returncode != 0
    assert "BROKEN" in done.stdout
    assert "gateway.inbound.shortcut -> gateway.api.app" in done.stdout


def test_inbound_reaching_into_outbound_breaks_them(tmp_path: Path) -> None:
    """Inbound and outbound are independent: an acknowledgement is a reaction the edge wires up
    (gateway/events.py), not a call from the threader."""
    root = copy_tree(tmp_path)
    threader = root / "gateway" / "inbound" / "threader.py"
    threader.write_text(threader.read_text() + "\nfrom gateway.outbound.replies import create_reply  # noqa: E402,F401\n")
    done = lint(root)
    assert done.returncode != 0
    assert "gateway.inbound.threader -> gateway.outbound.replies" in done.stdout


def test_the_pages_reaching_into_the_api_breaks_them(tmp_path: Path) -> None:
    """The web pages and the API are edges side by side: gateway/runtime.py mounts both, and
    what they share (sessions, reads) lives below them."""
    root = copy_tree(tmp_path)
    (root / "gateway" / "web" / "shortcut.py").write_text(
        '"""A page that borrows from the API."""\nfrom gateway.api.auth import provide_caller  # noqa: F401\n')
    done = lint(root)
    assert done.returncode != 0
    assert "gateway.web.shortcut -> gateway.api.auth" in done.stdout
