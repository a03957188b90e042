"""Configuration errors never echo a secret: a value under a key that looks like a secret, password,
token or credential is hidden, whether the field is known or a typo (no Ray, no storage)."""

from __future__ import annotations

import pytest

from ambient.config import ConfigError, load_config
from ambient.data import PrepareShardsConfig
from ambient.eval import AuditConfig
from ambient.serve.config import ServeConfig

SECRET = "hunter2-Zq9"


def config_error(cls, path=None, overrides=()) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(cls, path, overrides)
    return str(info.value)


@pytest.mark.parametrize(
    ("cls", "override", "field"),
    [
        (PrepareShardsConfig, f"storage.secret_acces_key={SECRET}", "storage.secret_acces_key"),
        (PrepareShardsConfig, f"storage.aws_session_token={SECRET}", "storage.aws_session_token"),
        (PrepareShardsConfig, f"storage.password={SECRET}", "storage.password"),
        (ServeConfig, f"auth.token={SECRET}", "auth.token"),
        (AuditConfig, f"models=[{{path: null, api_key: {SECRET}}}]", "models.0.api_key"),
    ],
)
def test_unknown_secret_looking_field_names_the_field_and_hides_the_value(cls, override, field):
    message = config_error(cls, overrides=[override])
    assert f"  {field}: unknown field" in message
    assert SECRET not in message


def test_known_secret_field_of_the_wrong_type_is_not_echoed(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("storage:\n  secret_access_key: [hunter2-Zq9]\n  access_key_id: {a: hunter2-Zq9}\n")
    message = config_error(PrepareShardsConfig, config)
    assert "storage.secret_access_key" in message and "storage.access_key_id" in message
    assert SECRET not in message


def test_secret_given_with_set_is_kept_verbatim_not_parsed_as_yaml():
    cfg = load_config(
        PrepareShardsConfig, None, ["storage.secret_access_key=0012", "storage.access_key_id=1e5"]
    )
    assert cfg.storage.secret_access_key.get_secret_value() == "0012"
    assert cfg.storage.access_key_id.get_secret_value() == "1e5"


def test_malformed_overrides_do_not_echo_a_secret():
    no_equals = config_error(PrepareShardsConfig, overrides=[f"storage.secret_access_key: {SECRET}"])
    assert "key.path=value" in no_equals and SECRET not in no_equals
    not_section = config_error(
        PrepareShardsConfig, overrides=["storage=plain", f"storage.secret_access_key={SECRET}"]
    )
    assert "storage is not a section" in not_section and SECRET not in not_section


def test_yaml_syntax_error_does_not_quote_the_line(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(f"storage:\n  secret_access_key: {SECRET}: [\n")
    message = config_error(PrepareShardsConfig, config)
    assert str(config) in message and "line 2" in message and SECRET not in message


def test_plain_values_are_still_shown():
    message = config_error(PrepareShardsConfig, overrides=["rows_per_shard=abc"])
    assert "rows_per_shard" in message and "'abc'" in message
