"""run_job: a storage error is the user's to fix (one line, exit status 2), as a data error is."""

from __future__ import annotations

import pytest

from ambient.cli import run_job
from ambient.storage import resolve_filesystem


def test_storage_error_exits_2_with_one_line(capsys):
    with pytest.raises(SystemExit) as info:
        run_job(lambda uri: resolve_filesystem(uri), "ftp://host/data")
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: unsupported storage URI 'ftp://host/data': use a local path or s3://bucket/prefix"]
