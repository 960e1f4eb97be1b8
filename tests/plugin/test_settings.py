"""The plugin's settings: every one is reachable by its key name."""

from __future__ import annotations

import pytest

from segearth_qgis import settings


def test_every_setting_is_in_all_and_loads_by_name():
    defined = {value.key for value in vars(settings).values() if isinstance(value, settings.Setting)}
    assert set(settings.ALL) == defined and "live_update" in defined
    assert settings.load("live_update") == settings.LIVE_UPDATE.load()  # KeyError while ALL left it out


@pytest.fixture
def auth_database():
    """QGIS's authentication database of the throwaway profile, unlocked as a user would (master password)."""
    from qgis.core import QgsApplication

    manager = QgsApplication.authManager()
    assert manager.masterPasswordIsSet() or manager.setMasterPassword("segearth-tests", True)
    yield manager
    settings.save_backend_token("")
    settings.BACKEND_URL.reset()


def test_the_token_is_kept_in_qgis_authentication_database_not_in_plain_settings(auth_database):
    from qgis.core import QgsAuthMethodConfig, QgsSettings

    settings.BACKEND_URL.save("https://gpu.example:8765")
    settings.save_backend_token("s3cret-token")
    assert settings.BACKEND_TOKEN.load() == "" and "s3cret" not in str(QgsSettings().allKeys())
    config = QgsAuthMethodConfig()
    assert auth_database.loadAuthenticationConfig(settings.BACKEND_TOKEN_AUTHCFG.load(), config, True)
    assert config.config("password") == "s3cret-token" and config.name() == settings.TOKEN_CONFIG_NAME
    assert settings.backend_token() == "s3cret-token" == settings.backend_settings().token
    settings.save_backend_token("")
    assert settings.BACKEND_TOKEN_AUTHCFG.load() == "" and settings.backend_token() == ""


def test_a_token_in_the_plain_settings_moves_to_the_database(auth_database):
    settings.BACKEND_URL.save("https://gpu.example:8765")
    settings.BACKEND_TOKEN.save("from-0.2")  # what an older version left
    assert settings.backend_token() == "from-0.2"
    assert settings.BACKEND_TOKEN.load() == "" and settings.BACKEND_TOKEN_AUTHCFG.load()
    assert settings.backend_token() == "from-0.2" == settings.backend_settings().token


def test_a_plain_token_is_moved_only_by_the_main_thread_once_the_master_password_is_given(auth_database):
    """Found by CI: a status poll moved a plain token while no master password was set, and QGIS crashed
    asking for one; a task's thread must not write the authentication database either."""
    import threading

    settings.BACKEND_URL.save("https://gpu.example:8765")
    settings.BACKEND_TOKEN.save("from-0.2")
    read: list[str] = []
    worker = threading.Thread(target=lambda: read.append(settings.backend_token()))
    worker.start()
    worker.join(30)
    assert read == ["from-0.2"] and settings.BACKEND_TOKEN.load() == "from-0.2"  # not moved off the main thread
    auth_database.clearMasterPassword()
    try:
        assert not auth_database.masterPasswordIsSet()
        assert settings.backend_token() == "from-0.2"  # no prompt: it stays plain until the password is given
        assert settings.BACKEND_TOKEN.load() == "from-0.2" and settings.BACKEND_TOKEN_AUTHCFG.load() == ""
    finally:
        assert auth_database.setMasterPassword("segearth-tests", True)
    assert settings.backend_token() == "from-0.2" and settings.BACKEND_TOKEN.load() == ""
