"""API keys, tenants' collections and job ownership."""

from __future__ import annotations

import json

import pytest

from api.auth import OPEN, Principal, authenticate, digest, main, mint
from common.errors import Forbidden, NotFound, Unauthorized
from common.settings import ApiKey, Settings

KEY_A, KEY_B = "qk_alpha-secret", "qk_bravo-secret"
KEYS = [
    ApiKey(name="alpha", sha256=digest(KEY_A), collections=["a", "shared"]),
    ApiKey(name="bravo", sha256=digest(KEY_B), collections=["*"]),
]


def test_no_keys_configured_means_open() -> None:
    assert authenticate(None, []) is OPEN
    assert OPEN.may_use("anything") and OPEN.owns("whoever") and OPEN.owns(None)


@pytest.mark.parametrize(
    "header", [None, "", "Bearer", "Bearer   ", "Basic qk_alpha-secret", "Bearer qk_wrong", KEY_A]
)
def test_missing_or_wrong_keys_are_unauthorized(header: str | None) -> None:
    with pytest.raises(Unauthorized):
        authenticate(header, KEYS)


def test_a_key_is_bound_to_its_collections_and_its_own_jobs() -> None:
    alpha = authenticate(f"Bearer {KEY_A}", KEYS)
    assert alpha == Principal("alpha", frozenset({"a", "shared"}))
    assert alpha.may_use("a") and not alpha.may_use("b")
    alpha.require("shared")
    with pytest.raises(Forbidden):
        alpha.require("b")
    with pytest.raises(NotFound):  # reads of another tenant's collection look like a missing one
        alpha.require_visible("b")
    assert alpha.owns("alpha") and not alpha.owns("bravo") and not alpha.owns(None)


def test_star_grants_every_collection_but_not_other_keys_jobs() -> None:
    bravo = authenticate(f"bearer {KEY_B}", KEYS)  # the scheme is case-insensitive
    assert bravo.collections is None and bravo.may_use("anything")
    assert not bravo.owns("alpha")


def test_minted_keys_are_stored_as_digests_only(capsys: pytest.CaptureFixture[str]) -> None:
    key, entry = mint("team", ["docs"])
    spec = ApiKey.model_validate(entry)
    assert key not in json.dumps(entry) and spec.sha256 == digest(key)
    assert authenticate(f"Bearer {key}", [spec]).name == "team"
    assert main(["team", "docs", "faq"]) == 0
    assert '"collections": ["docs", "faq"]' in capsys.readouterr().out
    assert main([]) == 2


def test_keys_come_from_the_environment_as_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("API_KEYS", json.dumps([KEYS[0].model_dump()]))
    assert Settings().api_keys == [KEYS[0]]
    monkeypatch.setenv("API_KEYS", json.dumps([{"name": "x", "sha256": "not-hex", "collections": ["a"]}]))
    with pytest.raises(ValueError, match="sha256"):
        Settings()
