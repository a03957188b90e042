"""run_job: a storage error is the user's to fix (one line, exit status 2), as a data error is."""

from __future__ import annotations

import pytest

from ambient.cli import run_job
from ambient.data.errors import DataError
from ambient.storage import StorageError, resolve_filesystem


def test_storage_error_is_its_own_kind():
    assert not issubclass(StorageError, DataError)


def test_storage_error_exits_2_with_one_line(capsys):
    with pytest.raises(SystemExit) as info:
        run_job(lambda uri: resolve_filesystem(uri), "ftp://host/data")
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: unsupported storage URI 'ftp://host/data': use a local path or s3://bucket/prefix"]
