"""Storage URLs: one redaction for every form, and bad URLs refused in one line (exit 2) that
never contains the password."""

from __future__ import annotations

from pathlib import Path

import pytest

from kfaclab.analysis.report.provenance import strip_password
from kfaclab.cli.main import main
from kfaclab.study.storage import redact, resolve

SECRET = "s3cr.t"
REDACTED = [
    # (URL, what every message and file shows)
    (f"postgresql://alice:{SECRET}@db.example:5432/study", "postgresql://alice@db.example:5432/study"),
    (f"postgresql+psycopg2://alice:{SECRET}@db:5432/s", "postgresql+psycopg2://alice@db:5432/s"),
    (f"postgres://alice:{SECRET}@db/s", "postgres://alice@db/s"),
    (f"mysql://alice:{SECRET}@db/s", "mysql://alice@db/s"),
    (f"redis://:{SECRET}@cache:6379/0", "redis://cache:6379/0"),
    (f"postgresql://alice@db/s?password={SECRET}", "postgresql://alice@db/s?password=***"),
    (f"postgresql://db/s?user=a&password={SECRET}&sslmode=require",
     "postgresql://db/s?user=a&password=***&sslmode=require"),
    (f"postgresql://db/s?sslpassword={SECRET}", "postgresql://db/s?sslpassword=***"),
    (f"postgresql://alice:p@ss@{SECRET}@db:5432/s", "postgresql://alice@db:5432/s"),
    (f"postgresql://alice:p%40ss{SECRET}@db/s", "postgresql://alice@db/s"),
    (f"postgresql://alice:pa/ss{SECRET}@db/s", "postgresql://alice@db/s"),
    (f"postgresql://alice:pa?ss{SECRET}@db/s", "postgresql://alice@db/s"),
    ("postgresql://alice@db:5432/s", "postgresql://alice@db:5432/s"),  # user only: unchanged
    (f"postgresql://alice:{SECRET}@[::1]:5432/s", "postgresql://alice@[::1]:5432/s"),
    (f"postgresql://alice:{SECRET}@[::1/s", "postgresql://alice@[::1/s"),  # malformed
    (f"postgresql://alice:{SECRET}@db:port/s", "postgresql://alice@db:port/s"),  # bad port
    ("sqlite:////tmp/a@b/studies.db", "sqlite:////tmp/a@b/studies.db"),  # no user info
    ("runs/quick", "runs/quick"),  # a folder, not a URL
]  # fmt: skip


@pytest.mark.parametrize(("url", "shown"), REDACTED)
def test_redact_removes_every_password(url: str, shown: str) -> None:
    assert redact(url) == shown
    assert SECRET not in redact(url)
    assert strip_password(url) == shown  # the report's provenance uses the same function


REFUSED = [
    (f"postgres://alice:{SECRET}@db/s", "must start with postgresql://, not postgres://"),
    (f"mysql://alice:{SECRET}@db/s", "must start with postgresql:// or sqlite:///"),
    (f"ftp://alice:{SECRET}@db/s", "must start with postgresql:// or sqlite:///"),
    (f"postgresql://alice:{SECRET}@db:54x2/s", "port must be a number in 1..65535, got '54x2'"),
    (f"postgresql://alice:{SECRET}@db:99999/s", "port must be a number in 1..65535, got '99999'"),
    (f"postgresql://alice:{SECRET}@db:/s", "port must be a number in 1..65535, got ''"),
    (f"postgresql://alice:{SECRET}@[::1/s", "malformed IPv6 host"),
    (f"postgresql://alice:{SECRET}@[::1]x/s", "malformed IPv6 host"),
    (f"postgresql://alice:{SECRET}@::1:5432/s", "IPv6 host must be in brackets"),
    (f"postgresql://alice:p@ss{SECRET}@db/s", "write an @ in the user or password as %40"),
    ("sqlite:///:memory:", "must name a database file"),
    ("sqlite:///", "must name a database file"),
    ("sqlite:///file:x?mode=memory&uri=true", "must name a database file"),
    ("sqlite://", "must be sqlite:///PATH"),
]  # fmt: skip


@pytest.mark.parametrize(("url", "rule"), REFUSED)
@pytest.mark.parametrize("command", ["status", "export", "sweep"])
def test_bad_storage_urls_are_one_line_without_the_password(
    url: str, rule: str, command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = Path(__file__).resolve().parents[1] / "configs" / "smoke.toml"
    args = {
        "status": ["status", "--storage", url],
        "export": ["export", "--storage", url, str(tmp_path / "t.csv")],
        "sweep": ["sweep", str(config), "--storage", url],
    }[command]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("kfaclab: error: storage URL")
    assert rule in err and redact(url) in err
    assert SECRET not in err
    assert not list(tmp_path.iterdir())  # nothing created


def test_an_unreachable_server_is_one_line_without_the_password(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A real connection attempt (nothing listens on port 1) through the real driver."""
    url = f"postgresql://alice:{SECRET}@127.0.0.1:1/s?password={SECRET}"
    assert main(["status", "--storage", url]) == 2
    err = capsys.readouterr().err
    assert err == (
        "kfaclab: error: cannot reach storage postgresql://alice@127.0.0.1:1/s?password=***: "
        "connection refused\n"
    )


def test_describe_is_the_redacted_url() -> None:
    url = f"postgresql://alice:{SECRET}@db:5432/s?password={SECRET}"
    storage = resolve(None, url)
    assert storage.describe() == redact(url) and SECRET not in storage.identity()
