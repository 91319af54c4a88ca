"""/healthz shows where each dependency is, never a credential: URL spellings and error texts."""

from __future__ import annotations

import base64
from urllib.parse import quote

import pytest

from api.redaction import (
    Redactor,
    display_broker,
    display_milvus,
    display_redis,
    token_secrets,
    url_secrets,
)
from common.settings import Settings

R, B, M = display_redis, display_broker, display_milvus
UNPARSABLE = "(hidden: the URL does not parse (a port that is not a number, an unclosed '['))"
ENCODE = "(hidden: percent-encode '@', '/', '?' and '#' in the user name and password)"
# (display function, configured URL, what /healthz shows, credentials that must never show)
URLS = [
    (R, "redis://user:p@ss@host:6379/0", "redis://host:6379/0", ["user", "p@ss"]),
    (R, "redis://host:6379/0?password=s3cret-q", "redis://host:6379/0", ["s3cret-q"]),
    (R, "redis://h:6379/0?username=alice&password=p%40ss", "redis://h:6379/0", ["alice", "p@ss"]),
    (
        R,
        "redis://us%40er:p%40ss%3Aw0rd@host/3",
        "redis://host/3",
        ["us@er", "us%40er", "p@ss:w0rd", "p%40ss%3Aw0rd"],
    ),
    (R, "redis://:only-pass@127.0.0.1:6379", "redis://127.0.0.1:6379", ["only-pass"]),
    (R, "unix://:sockpw@/var/run/redis.sock", "unix:///var/run/redis.sock", ["sockpw"]),
    (R, "unix:///run/r.sock?db=4&password=qpw1", "unix:///run/r.sock?db=4", ["qpw1"]),
    (R, "rediss://tls-user:tls-pass@[::1]:6380/2", "rediss://[::1]:6380/2", ["tls-user", "tls-pass"]),
    (R, "redis://h:6379/0?db=5#frag-x", "redis://h:6379/5", []),
    (R, "redis://u0:pa#ss-tail@host:1/0", "redis://" + ENCODE, ["pa#ss-tail", "ss-tail@host"]),
    (R, "redis://u0:12/ss-tail@host/0", "redis://" + ENCODE, ["12/ss-tail", "ss-tail@host"]),
    (R, "redis://:pw-x@h:abc/0", "redis://" + UNPARSABLE, ["pw-x"]),
    (R, "user1:pw-z@host:6379", "(hidden: not a redis://, rediss:// or unix:// URL)", ["user1", "pw-z"]),
    (B, "amqp://rabbit-user:rabbit-pw@mq//", "amqp://mq//", ["rabbit-user", "rabbit-pw"]),
    (B, "amqp://guest:gu3st-pw@127.0.0.1:5672/vhost", "amqp://127.0.0.1:5672/vhost", ["gu3st-pw"]),
    (B, "amqp://a-user:a-pw@h1//;amqp://a-user:a-pw@h2//", "amqp://h1//;amqp://h2//", ["a-pw"]),
    (B, "redis://:broker-pw@127.0.0.1:6379/1", "redis://127.0.0.1:6379/1", ["broker-pw"]),
    (
        B,
        "amqp://mq-u:pa;ss-x@mq//",
        "amqp://(hidden: kombu splits URLs at ';': percent-encode it in the password as %3B)",
        ["pa;ss-x", "ss-x@mq"],
    ),
    (B, "sqla+postgresql://pg-user:pg-pw@db/jobs", "sqla+postgresql://db/jobs", ["pg-pw"]),
    (M, "http://root:Milvus-pw@milvus:19530", "http://milvus:19530", ["root", "Milvus-pw"]),
    (M, "https://zc-user:zc-pw@[2001:db8::1]/db1", "https://[2001:db8::1]/db1", ["zc-pw"]),
    (M, "tcp://h:19530?token=tok-in-query", "tcp://h:19530", ["tok-in-query"]),
    (R, "redis://:brkt-pw@[::1:6379/0", "redis://" + UNPARSABLE, ["brkt-pw"]),
    (M, "http://root:brkt-pw@[::1:19530", "http://" + UNPARSABLE, ["brkt-pw", "root"]),
    (B, "amqp://u-x:brkt-pw@[::1//", "amqp://" + UNPARSABLE, ["brkt-pw", "u-x"]),
    (M, "./var/milvus.db", "./var/milvus.db", []),
    (M, "unix:/tmp/milvus.sock", "unix:/tmp/milvus.sock", []),
]


@pytest.mark.parametrize(("display", "url", "shown", "secrets"), URLS)
def test_each_spelling_shows_scheme_host_port_and_database_only(
    display: object, url: str, shown: str, secrets: list[str]
) -> None:
    assert display(url) == shown  # type: ignore[operator]
    assert "@" not in shown.replace("'@'", "")  # never user info, nor what follows a cut-short password
    for secret in secrets:
        assert secret.lower() not in shown.lower()


@pytest.mark.parametrize(("display", "url", "shown", "secrets"), URLS)
def test_each_spellings_credentials_are_scrubbed_from_any_text(
    display: object, url: str, shown: str, secrets: list[str]
) -> None:
    redactor = Redactor.of(url_secrets(url))
    for secret in secrets:
        for form in {secret, quote(secret, safe=""), quote(secret), repr(secret)}:
            text = redactor.scrub(f"failed on {url} with {form}; {form.upper()}")
            assert secret.lower() not in text.lower(), (secret, text)


# (configured URLs and token, an error text a library could raise, what must not show, what must stay)
ERRORS = [
    (
        {"milvus_uri": "ftp://root:Milvus-pw@mhost:1"},
        "<ConnectionConfigException: (code=1, message=uri: ftp://root:Milvus-pw@mhost:1 is illegal)>",
        ["root", "Milvus-pw"],
        "is illegal",
    ),
    (
        {"milvus_uri": "http://admin:adm1n-pw@milvus:19530"},
        "Fail connecting to server on admin:adm1n-pw@milvus:19530, illegal connection params",
        ["admin", "adm1n-pw"],
        "milvus:19530",
    ),
    (
        {"redis_url": "redis://u0:pa#ss@host:1/0"},
        "Port could not be cast to integer value as 'pa'",
        ["'pa'"],
        "Port could not be cast",
    ),
    (
        {"broker_url": "amqp://mq-user:pa;ss@mq//"},
        "Port could not be cast to integer value as 'pa'",
        ["'pa'"],
        "integer value",
    ),
    (
        {"redis_url": "redis://:r3dis-pw@127.0.0.1:1/0"},
        "Error 111 connecting to 127.0.0.1:1. Connection refused.",
        ["r3dis-pw"],
        "Error 111 connecting to 127.0.0.1:1. Connection refused.",
    ),
    (
        {"redis_url": "redis://h/0?password=p%40ss-word"},
        "AUTH p@ss-word failed; sent p%40ss-word and p%2540ss-word",
        ["p@ss-word", "p%40ss-word", "p%2540ss-word", "ss-word"],
        "AUTH",
    ),
    (
        {"milvus_token": "tok-user:tok-Pass"},
        "rejected credentials tok-user / TOK-PASS",
        ["tok-user", "tok-pass"],
        "rejected credentials",
    ),
    (
        {"milvus_token": "tok-user:tok-Pass"},
        "authorization: basic " + base64.b64encode(b"tok-user:tok-Pass").decode(),
        [base64.b64encode(b"tok-user:tok-Pass").decode()],
        "authorization",
    ),
    (
        {"redis_url": "redis://h/0?password=it's-s3cret"},
        "invalid password 'it\\'s-s3cret' or \"it's-s3cret\"",
        ["s3cret"],
        "invalid password",
    ),
    (
        {},
        "cannot reach amqp://other:unconfigured@elsewhere// (?password=zz-top&db=1)",
        ["other", "unconfigured", "zz-top"],
        "elsewhere",
    ),
    (
        {"broker_url": "amqp://gu:ab@mq//"},
        "login ab refused by unreachable broker",
        [" ab "],
        "unreachable",
    ),
]


@pytest.mark.parametrize(("config", "message", "hidden", "kept"), ERRORS)
def test_error_texts_lose_every_configured_secret(
    config: dict[str, str], message: str, hidden: list[str], kept: str
) -> None:
    scrubbed = Redactor.from_settings(Settings(**config)).error(Exception(message))  # type: ignore[arg-type]
    for secret in hidden:
        assert secret.lower() not in scrubbed.lower(), scrubbed
    assert kept in scrubbed


def test_an_error_is_scrubbed_before_it_is_cut() -> None:
    """Cutting first could leave the start of a secret that no longer matches."""
    redactor = Redactor.of(url_secrets("redis://:abcdefghij@h/0"))
    scrubbed = redactor.error(Exception("x" * 295 + "abcdefghij\nsecond line abcdefghij"))
    assert "abcde" not in scrubbed and "second" not in scrubbed and len(scrubbed) <= 300


def test_webhook_secret_and_token_halves_are_secrets() -> None:
    settings = Settings(milvus_token="root:Milvus", webhook_secret="whsec-x1")
    scrubbed = Redactor.from_settings(settings).scrub("root Milvus whsec-x1 root:Milvus")
    assert scrubbed == "*** *** *** ***"
    assert token_secrets("api-key-only") == {"api-key-only", base64.b64encode(b"api-key-only").decode()}


def test_urls_without_credentials_have_no_secrets() -> None:
    for url in ("redis://127.0.0.1:6379/0", "amqp://mq//", "http://127.0.0.1:19530", "redis://h/0?db=2"):
        assert url_secrets(url) == set()
