"""Settings: documented, parsed strictly, the secret generated once."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from pydantic import ValidationError

from gateway.settings import SecretKeyError, Settings

EXAMPLE = Path(__file__).resolve().parent.parent / "config" / "example.env"


def test_every_setting_is_documented_in_the_example() -> None:
    documented = set(re.findall(r"^#?\s*(GATEWAY_[A-Z0-9_]+)=", EXAMPLE.read_text(), re.M))
    fields = {f"GATEWAY_{name.upper()}" for name in Settings.model_fields}
    assert fields == documented


def test_defaults_match_the_issue(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(__import__("os").environ):
        if key.startswith("GATEWAY_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    settings = Settings()
    assert (settings.smtp_host, settings.smtp_port, settings.http_host, settings.http_port) == (
        "127.0.0.1", 2525, "127.0.0.1", 8000)
    assert settings.resolved_database_url == f"sqlite:///{tmp_path / 'data' / 'gateway.db'}"
    assert settings.smtp_max_message_size == 25 * 1024 * 1024 and settings.smtp_max_recipients == 100


def test_secret_key_is_generated_once_and_kept(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    first = settings.secret()
    assert len(first) >= 48 and Settings(data_dir=tmp_path).secret() == first
    assert (tmp_path / "secret_key").stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("field,value", [("secret_key", "changeme"), ("mail_domain", "a@b"),
                                         ("smtp_port", "70000"), ("log_level", "LOUD")])
def test_bad_values_are_refused(field: str, value: str) -> None:
    with pytest.raises(ValidationError):
        Settings(**{field: value})


def test_the_example_file_as_written_starts_with_its_defaults(tmp_path: Path) -> None:
    """Copying config/example.env unchanged must give the defaults: `GATEWAY_X=` means unset,
    not a path named "." (a TLS certificate the server then failed to load) or an error."""
    example = tmp_path / "gateway.env"
    example.write_text(EXAMPLE.read_text())
    settings = Settings(_env_file=example)  # type: ignore[call-arg]
    assert settings.smtp_tls_cert_file is None and settings.smtp_tls_key_file is None
    assert settings.dkim_private_key_file is None and settings.backup_dir is None and settings.pg_bin_dir is None
    assert settings.serve_worker_processes is None
    assert Settings(serve_worker_processes="0").resolved_serve_worker_processes == 0  # type: ignore[arg-type]
    assert Settings(serve_worker_processes="3").resolved_serve_worker_processes == 3  # type: ignore[arg-type]


@pytest.mark.parametrize("content", ["", "\n", "short-key", "changeme\n"])
def test_an_empty_or_short_secret_key_file_is_refused_like_a_short_environment_value(
        tmp_path: Path, content: str) -> None:
    """Before: an empty file gave the key b"" and every reply address was signed with it."""
    (tmp_path / "secret_key").write_text(content)
    with pytest.raises(SecretKeyError, match="secret_key"):
        Settings(data_dir=tmp_path).secret()


def test_derived_keys_differ_by_purpose_and_from_the_secret(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, secret_key="x" * 32)
    backup, log = settings.derived_key("backup-manifest"), settings.derived_key("deletion-log")
    assert len(backup) == 32 and backup != log and settings.secret() not in (backup, log)
    assert Settings(data_dir=tmp_path, secret_key="y" * 32).derived_key("backup-manifest") != backup


# --- Strict names and the env file (issue 18 "Settings") --------------------------------------

def _gateway_command() -> list[str]:
    import sys
    script = Path(sys.executable).with_name("gateway")
    return [str(script)] if script.exists() else [sys.executable, "-m", "gateway.cli"]


def _run_gateway(tmp_path: Path, extra_env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    from tests.conftest import gateway_subprocess_env
    env = gateway_subprocess_env()
    env.update(GATEWAY_DATA_DIR=str(tmp_path / "data"), GATEWAY_MAIL_DOMAIN="mail.test", **extra_env)
    return subprocess.run(_gateway_command() + list(args), env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)


def test_a_typo_in_a_setting_stops_the_start_with_exit_2_and_a_suggestion(tmp_path: Path) -> None:
    """Before: GATEWAY_SMTP_PROT was ignored and `gateway migrate` (or serve) went on, exit 0."""
    done = _run_gateway(tmp_path, {"GATEWAY_SMTP_PROT": "2526"}, "migrate")
    assert done.returncode == 2, done.stderr
    assert "unknown setting GATEWAY_SMTP_PROT in the environment; did you mean GATEWAY_SMTP_PORT?" in done.stderr
    assert not (tmp_path / "data" / "gateway.db").exists()  # nothing started


def test_the_exempt_names_pass(tmp_path: Path) -> None:
    done = _run_gateway(tmp_path, {"GATEWAY_TEST_ANYTHING": "1", "GATEWAY_BENCH_ROUNDS": "3"}, "migrate")
    assert done.returncode == 0, done.stderr


def test_a_dotenv_in_the_working_directory_is_read(tmp_path: Path) -> None:
    """Before: `.env` was ignored unless GATEWAY_ENV_FILE named it."""
    from gateway.settings import load_settings
    (tmp_path / ".env").write_text("GATEWAY_MAIL_DOMAIN=mail.from-dotenv.example\nOTHER_TOOL=1\n")
    settings = load_settings({}, cwd=tmp_path)
    assert settings.mail_domain == "mail.from-dotenv.example"


def test_the_environment_wins_over_the_dotenv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.settings import load_settings
    (tmp_path / ".env").write_text("GATEWAY_SMTP_PORT=2600\nGATEWAY_MAIL_DOMAIN=mail.file.example\n")
    monkeypatch.setenv("GATEWAY_SMTP_PORT", "2700")
    monkeypatch.delenv("GATEWAY_MAIL_DOMAIN", raising=False)
    settings = load_settings(cwd=tmp_path)
    assert settings.smtp_port == 2700 and settings.mail_domain == "mail.file.example"


def test_a_named_env_file_that_is_missing_is_an_error(tmp_path: Path) -> None:
    """Before: GATEWAY_ENV_FILE=/wrong/path started with the defaults, silently."""
    done = _run_gateway(tmp_path, {"GATEWAY_ENV_FILE": str(tmp_path / "missing.env")}, "migrate")
    assert done.returncode == 2 and "GATEWAY_ENV_FILE names" in done.stderr and "missing.env" in done.stderr


def test_an_unknown_name_in_the_env_file_is_refused_too(tmp_path: Path) -> None:
    named = tmp_path / "gateway.env"
    named.write_text("GATEWAY_MAIL_DOMAN=mail.example.org\n")
    done = _run_gateway(tmp_path, {"GATEWAY_ENV_FILE": str(named)}, "migrate")
    assert done.returncode == 2
    assert f"unknown setting GATEWAY_MAIL_DOMAN in {named}; did you mean GATEWAY_MAIL_DOMAIN?" in done.stderr


def test_a_name_far_from_every_setting_gets_no_wild_guess() -> None:
    from gateway.settings import suggestion, unknown_names
    assert unknown_names(["GATEWAY_ZZZZZZZZZZZZ", "GATEWAY_SMTP_PORT", "GATEWAY_ENV_FILE", "HOME"]) == [
        "GATEWAY_ZZZZZZZZZZZZ"]
    assert suggestion("GATEWAY_ZZZZZZZZZZZZ") == ""
