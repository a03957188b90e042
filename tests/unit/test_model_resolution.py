"""ambient.models.source: the one model-resolution rule; errors name the config field that was set."""

from __future__ import annotations

import pytest

from ambient.models.source import check_model, resolve_model


def test_a_missing_local_model_names_the_field(tmp_path):
    missing = str(tmp_path / "no-such-model")
    with pytest.raises(FileNotFoundError, match=rf"^model\.path: model folder {missing} does not exist"):
        check_model(missing, field="model.path")
    with pytest.raises(FileNotFoundError, match=r"^models\[0\]\.path: "):
        resolve_model(missing, field="models[0].path")


def test_a_file_is_no_model_folder(tmp_path):
    (tmp_path / "model").write_text("")
    with pytest.raises(ValueError, match=r"^encode\.model: model path .* is not a folder"):
        check_model(str(tmp_path / "model"), field="encode.model")
    with pytest.raises(FileNotFoundError, match=r"^model folder"):  # no field: the message alone
        resolve_model(str(tmp_path / "absent"))
