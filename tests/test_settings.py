import pytest

from ptgstore.settings import Settings, SettingsError


def test_defaults_are_laptop_safe():
    settings = Settings.from_env({})
    assert settings.host == "127.0.0.1"
    assert settings.port == 7890
    assert settings.redis_url is None and settings.embedded
    assert settings.auth == "dev" and not settings.auth_explicit
    assert settings.max_len == 1000
    assert settings.max_message == 16 * 1024 * 1024
    assert settings.token_ttl == 30 * 24 * 3600
    assert settings.token_verify_exp is True


def test_environment_is_read():
    env = {
        "PTGSTORE_REDIS_URL": "redis://127.0.0.1:1234/2", "PTGSTORE_HOST": "::1", "PTGSTORE_PORT": "9000",
        "PTGSTORE_DATA_DIR": "/tmp/x", "PTGSTORE_AUTH": "users", "PTGSTORE_USERS_FILE": "/tmp/u.json",
        "PTGSTORE_SECRET": "s3", "PTGSTORE_TOKEN_TTL": "60", "PTGSTORE_MAX_LEN": "5",
        "PTGSTORE_MAX_MESSAGE": "1024", "PTGSTORE_TOKEN_VERIFY_EXP": "false",
        "PTGSTORE_WS_ALLOWED_ORIGINS": "https://a.example, https://b.example",
    }
    settings = Settings.from_env(env)
    assert settings.redis_url == "redis://127.0.0.1:1234/2"
    assert (settings.host, settings.port) == ("::1", 9000)
    assert settings.data_dir == "/tmp/x"
    assert settings.auth == "users" and settings.auth_explicit
    assert str(settings.users_path) == "/tmp/u.json"
    assert settings.secret == "s3"
    assert (settings.token_ttl, settings.max_len, settings.max_message) == (60, 5, 1024)
    assert settings.token_verify_exp is False
    assert settings.ws_allowed_origins == ("https://a.example", "https://b.example")


def test_flags_override_environment():
    settings = Settings.from_env({"PTGSTORE_PORT": "9000", "PTGSTORE_HOST": "::1"}, port=9100, host=None)
    assert settings.port == 9100
    assert settings.host == "::1"


def test_users_file_defaults_into_data_dir():
    assert str(Settings.from_env({"PTGSTORE_DATA_DIR": "/srv/ptg"}).users_path) == "/srv/ptg/users.json"


@pytest.mark.parametrize("name,value,words", [
    ("PTGSTORE_PORT", "eighty", "whole number"),
    ("PTGSTORE_PORT", "٣", "whole number"),  # non-ASCII digit
    ("PTGSTORE_MAX_LEN", "0", "at least 1"),
    ("PTGSTORE_AUTH", "open", "PTGSTORE_AUTH"),
    ("PTGSTORE_TOKEN_VERIFY_EXP", "maybe", "true or false"),
    ("PTGSTORE_REDIS_FSYNC", "sometimes", "PTGSTORE_REDIS_FSYNC"),
    ("PTGSTORE_EPHEMERAL_DISK", "perhaps", "true or false"),
    ("PTGSTORE_ROOT_PATH", "/a b", "PTGSTORE_ROOT_PATH"),
])
def test_bad_values_name_the_variable(name, value, words):
    with pytest.raises(SettingsError, match=words):
        Settings.from_env({name: value})


def test_new_settings_default_off_and_are_read():
    assert Settings.from_env({}).ephemeral_disk is False and Settings.from_env({}).root_path == ""
    settings = Settings.from_env({"PTGSTORE_EPHEMERAL_DISK": "true", "PTGSTORE_ROOT_PATH": "/lab/store/"})
    assert settings.ephemeral_disk is True and settings.root_path == "/lab/store"
