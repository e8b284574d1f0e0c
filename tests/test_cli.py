"""The `gateway` command (issue 18 "CLI"): --version, help on every option, `studio
list|show|remove`, and read-only commands that never migrate, run as a real subprocess."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest
from sqlalchemy import select

from gateway.cli import build_parser
from gateway.store.db import (
    dispose_engines,
    get_engine,
    migrate,
    read_tx,
    schema_revision,
)
from gateway.store.tables import ACCOUNT_DELETION, STUDIO
from tests.conftest import BACKENDS, _throwaway_pg_database, gateway_subprocess_env

READ_ONLY = (["studio", "list", "--json"], ["quarantine", "list", "--json"], ["purge", "--dry-run", "--json"])


def gateway(tmp_path: Path, url: str, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).with_name("gateway")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "gateway.cli"]
    env = gateway_subprocess_env()
    env.update(GATEWAY_DATA_DIR=str(tmp_path / "data"), GATEWAY_MAIL_DOMAIN="mail.test",
               GATEWAY_SECRET_KEY="s" * 32, GATEWAY_DATABASE_URL=url)
    return subprocess.run(command + list(args), env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=120, input=stdin)


@pytest.fixture(params=BACKENDS)
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database with no schema at all: a SQLite file not created yet, an empty PostgreSQL one."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'fresh' / 'gateway.db'}"
    else:
        with _throwaway_pg_database(None) as url:
            yield url
    dispose_engines()


def revision(url: str) -> str:
    engine = get_engine(url)
    try:
        with read_tx(engine) as conn:
            return schema_revision(conn)
    finally:
        dispose_engines()


def test_version(tmp_path: Path) -> None:
    done = gateway(tmp_path, "sqlite:///unused.db", "--version")
    assert done.returncode == 0 and done.stdout.startswith("gateway ") and done.stdout.split()[1][0].isdigit()


def test_every_command_and_option_has_a_help_text() -> None:
    """Walks the whole argparse tree: before, 15 options (lockdown --name, restore FILE, ...) had none."""
    missing: list[str] = []

    def walk(parser: argparse.ArgumentParser, path: list[str]) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                helps = {a.dest: a.help for a in action._choices_actions}
                for name, sub in action.choices.items():
                    if not helps.get(name):
                        missing.append(" ".join(path + [name]))
                    walk(sub, path + [name])
            elif not isinstance(action, argparse._HelpAction) and not action.help:
                missing.append(" ".join(path + [action.option_strings[0] if action.option_strings else action.dest]))

    walk(build_parser(), ["gateway"])
    assert missing == []


def test_read_only_commands_on_an_empty_database_answer_nothing_and_create_nothing(
        tmp_path: Path, empty_url: str) -> None:
    for args in READ_ONLY:
        done = gateway(tmp_path, empty_url, *args)
        assert done.returncode == 0, done.stderr
        answer = json.loads(done.stdout)
        assert answer == [] or (answer["conversations"], answer["messages"]) == ([], [])
        assert "no schema yet" in done.stderr
    if empty_url.startswith("sqlite"):
        assert not (tmp_path / "fresh" / "gateway.db").exists()
    else:
        assert revision(empty_url) == ""


def test_read_only_commands_leave_an_older_schema_as_it_is(tmp_path: Path, empty_url: str) -> None:
    migrate(empty_url, "0014")
    dispose_engines()
    for args in READ_ONLY:
        done = gateway(tmp_path, empty_url, *args)
        assert done.returncode == 0, done.stderr
        assert "schema is at 0014" in done.stderr
    assert revision(empty_url) == "0014"  # before: `quarantine list` and `purge --dry-run` migrated to head


def test_a_read_on_a_schema_too_old_for_it_says_to_migrate(tmp_path: Path, empty_url: str) -> None:
    migrate(empty_url, "0005")   # before studio.time_zone (0014)
    dispose_engines()
    done = gateway(tmp_path, empty_url, "studio", "list")
    assert done.returncode == 1 and "run `gateway migrate` first" in done.stderr and "Traceback" not in done.stderr
    assert revision(empty_url) == "0005"


def test_studio_list_show_and_remove(tmp_path: Path, database_url: str) -> None:
    for slug in ("inkwell", "atelier"):
        assert gateway(tmp_path, database_url, "studio", "add", slug, "--name", slug.title(),
                       "--owner-email", f"owner@{slug}.example").returncode == 0
    listed = json.loads(gateway(tmp_path, database_url, "studio", "list", "--json").stdout)
    assert [s["slug"] for s in listed] == ["atelier", "inkwell"] and listed[1]["address"] == "inkwell@mail.test"
    shown = json.loads(gateway(tmp_path, database_url, "studio", "show", "inkwell", "--json").stdout)
    assert shown["owner_email"] == "owner@inkwell.example" and shown["profiles"] == 1
    assert gateway(tmp_path, database_url, "studio", "show", "nobody").returncode == 1

    # Not a terminal and no --yes: nothing is deleted, whatever comes on stdin.
    refused = gateway(tmp_path, database_url, "studio", "remove", "inkwell", stdin="inkwell\n")
    assert refused.returncode == 1 and "nothing deleted" in refused.stderr
    removed = gateway(tmp_path, database_url, "studio", "remove", "inkwell", "--yes", "--reason", "moved away")
    assert removed.returncode == 0, removed.stderr
    engine = get_engine(database_url)
    try:
        with read_tx(engine) as conn:
            assert list(conn.execute(select(STUDIO.c.slug)).scalars()) == ["atelier"]
            [row] = conn.execute(select(ACCOUNT_DELETION)).all()
        assert (row.channel, row.status, row.reason, row.studio_ref) == ("operator", "deleted", "moved away", shown["id"])
    finally:
        dispose_engines()
    # The deletion log beside the backups has its entry (a restore re-applies it).
    log = (tmp_path / "data" / "backups").rglob("*")
    assert any(p.is_file() for p in log)
    assert gateway(tmp_path, database_url, "studio", "remove", "inkwell", "--yes").returncode == 1


def on_terminal(tmp_path: Path, url: str, *args: str) -> tuple[int, str]:
    """Run `gateway ARGS` with a pseudo-terminal as stdin, stdout and stderr, as an operator would."""
    import os
    import select as select_

    script = Path(sys.executable).with_name("gateway")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "gateway.cli"]
    env = gateway_subprocess_env()
    env.update(GATEWAY_DATA_DIR=str(tmp_path / "data"), GATEWAY_MAIL_DOMAIN="mail.test",
               GATEWAY_SECRET_KEY="s" * 32, GATEWAY_DATABASE_URL=url)
    master, slave = os.openpty()
    proc = subprocess.Popen(command + list(args), stdin=slave, stdout=slave, stderr=slave, env=env, cwd=tmp_path)
    os.close(slave)
    chunks: list[bytes] = []
    try:
        while select_.select([master], [], [], 120)[0]:   # bounded: a hung command fails the test
            try:
                data = os.read(master, 65536)
            except OSError:   # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
    finally:
        returncode = proc.wait(timeout=120)
        os.close(master)
    return returncode, b"".join(chunks).decode(errors="replace")


def test_backup_and_purge_show_progress_on_a_terminal_and_nothing_extra_otherwise(
        tmp_path: Path, database_url: str) -> None:
    for slug in ("inkwell", "atelier"):
        assert gateway(tmp_path, database_url, "studio", "add", slug, "--name", slug.title(),
                       "--owner-email", f"owner@{slug}.example").returncode == 0
    code, shown = on_terminal(tmp_path, database_url, "purge")
    assert code == 0 and "purge: studio 1/2" in shown and "purge: studio 2/2" in shown and "\x1b[2K" in shown
    assert "0 conversation(s) and 0 message(s) deleted before" in shown
    plain = gateway(tmp_path, database_url, "purge")
    assert plain.returncode == 0 and "\x1b" not in plain.stderr + plain.stdout and "studio 1/2" not in plain.stderr

    code, shown = on_terminal(tmp_path, database_url, "backup", "--output", str(tmp_path / "b1.tar"))
    assert code == 0, shown
    assert "backup: copying the database" in shown and "backup: writing and verifying the archive" in shown
    plain = gateway(tmp_path, database_url, "backup", "--output", str(tmp_path / "b2.tar"))
    assert plain.returncode == 0 and "\x1b" not in plain.stderr + plain.stdout

    code, shown = on_terminal(tmp_path, database_url, "restore", str(tmp_path / "b1.tar"), "--force")
    assert code == 0, shown
    assert "restore: verifying the backup" in shown and "restore: loading, migrating and replaying" in shown
