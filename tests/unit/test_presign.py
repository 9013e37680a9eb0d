"""Download links: our SigV4 pre-signing equals botocore's byte for byte (frozen clock), and the gateway's
own signed links open one file until they expire, refusing any change."""

from __future__ import annotations

import functools
import os
import stat
import threading
from datetime import UTC, datetime, timedelta

import boto3
import botocore.auth
import pytest
from botocore.config import Config

from gateway.analytics.presign import MAX_EXPIRES_S, LinkSigner, S3Presigner, link_secret
from gateway.errors import ConfigError, PermissionDenied

FROZEN = datetime(2026, 3, 1, 12, 0, 7, tzinfo=UTC)
KEYS = [
    "fleet/exports/all/exp_0123456789abcdef/1/usage-all-2026-03.csv",
    "lake/exports/org_1/exp_1/2/usage a+b~=.focus.parquet",
    "x/ü é/データ.sqlite",
    "plain.csv",
]


@pytest.fixture
def frozen_botocore(monkeypatch):
    """botocore signs at FROZEN (its own clock, not ours, is what we freeze)."""
    monkeypatch.setattr(botocore.auth, "get_current_datetime",
                        lambda remove_tzinfo=True: FROZEN.replace(tzinfo=None))


@functools.cache
def _client(endpoint: str | None, region: str, style: str):  # noqa: ANN202 - a botocore S3 client
    return boto3.client("s3", region_name=region, endpoint_url=endpoint, aws_access_key_id="AKIDEXAMPLE",
                        aws_secret_access_key="wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
                        config=Config(signature_version="s3v4", s3={"addressing_style": style}))


def botocore_url(*, endpoint: str | None, region: str, bucket: str, key: str, expires: int, style: str) -> str:
    return _client(endpoint, region, style).generate_presigned_url(
        "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=expires)


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize(("endpoint", "region"), [("http://127.0.0.1:5000", "us-east-1"),
                                                  ("https://minio.example.com", "eu-central-1"),
                                                  ("https://storage.example.com:9443", "us-west-2")])
@pytest.mark.parametrize("expires", [1, 3600, MAX_EXPIRES_S])
def test_path_style_urls_equal_botocores(frozen_botocore, endpoint, region, key, expires):
    ours = S3Presigner(endpoint=endpoint, region=region, access_key="AKIDEXAMPLE",
                       secret_key="wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
    want = botocore_url(endpoint=endpoint, region=region, bucket="fg-bucket", key=key, expires=expires, style="path")
    assert ours.url("fg-bucket", key, expires_s=expires, now=FROZEN) == want


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("region", ["us-east-1", "eu-west-1", "ap-southeast-2"])
def test_aws_urls_are_regional_virtual_hosts_equal_to_botocores(frozen_botocore, region, key):
    ours = S3Presigner(endpoint=None, region=region, access_key="AKIDEXAMPLE",
                       secret_key="wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
    aws = f"https://s3.{region}.amazonaws.com"
    url = ours.url("my-bucket", key, expires_s=900, now=FROZEN)
    assert url.startswith(f"https://my-bucket.s3.{region}.amazonaws.com/")
    assert url == botocore_url(endpoint=aws, region=region, bucket="my-bucket", key=key, expires=900,
                               style="virtual")
    # A dotted bucket name would break the virtual host's TLS certificate: path style instead.
    dotted = ours.url("my.bucket", key, expires_s=900, now=FROZEN)
    assert dotted.startswith(f"{aws}/my.bucket/")
    assert dotted == botocore_url(endpoint=aws, region=region, bucket="my.bucket", key=key, expires=900,
                                  style="path")


def test_the_signature_depends_on_every_input(frozen_botocore):
    signer = S3Presigner(endpoint="http://127.0.0.1:5000", region="us-east-1", access_key="a", secret_key="s" * 20)
    base = signer.url("b", "k.csv", expires_s=60, now=FROZEN)
    others = {
        signer.url("b", "k2.csv", expires_s=60, now=FROZEN),
        signer.url("c", "k.csv", expires_s=60, now=FROZEN),
        signer.url("b", "k.csv", expires_s=61, now=FROZEN),
        signer.url("b", "k.csv", expires_s=60, now=FROZEN + timedelta(seconds=1)),
        S3Presigner("http://127.0.0.1:5000", "us-east-1", "a", "t" * 20).url("b", "k.csv", expires_s=60, now=FROZEN),
    }
    signature = base.rsplit("X-Amz-Signature=", 1)[1]
    assert len(others) == 5 and all(signature not in url for url in others)


@pytest.mark.parametrize("expires", [0, -1, MAX_EXPIRES_S + 1, True, 1.5])
def test_link_lifetime_is_bounded(expires):
    signer = S3Presigner(endpoint=None, region="us-east-1", access_key="a", secret_key="s")
    with pytest.raises(ConfigError):
        signer.url("b", "k", expires_s=expires)
    with pytest.raises(ConfigError):
        LinkSigner(b"x" * 32).sign("exp_1", "p", expires_s=expires)


def test_gateway_links_open_one_file_until_they_expire():
    links = LinkSigner(b"k" * 32)
    expires, sig = links.sign("exp_0123456789abcdef", "/lake/exports/org_a/exp_0123456789abcdef/1/f.csv",
                              expires_s=3600, now=FROZEN)
    assert expires == int(FROZEN.timestamp()) + 3600
    good = ("exp_0123456789abcdef", "/lake/exports/org_a/exp_0123456789abcdef/1/f.csv")
    links.verify(*good, str(expires), sig, now=FROZEN + timedelta(seconds=3599))
    links.verify(*good, str(expires), sig.upper(), now=FROZEN)  # hex is hex

    def refused(job_id, path, exp, signature, *, now=FROZEN) -> str:
        with pytest.raises(PermissionDenied) as e:
            links.verify(job_id, path, exp, signature, now=now)
        assert e.value.status == 403
        return e.value.code

    assert refused(*good, str(expires), sig, now=FROZEN + timedelta(seconds=3600)) == "download_link_expired"
    tampered = [
        (*good, str(expires + 1), sig),  # a longer life
        (*good, str(expires), sig[:-1] + ("0" if sig[-1] != "0" else "1")),
        ("exp_fedcba9876543210", good[1], str(expires), sig),  # another job
        (good[0], good[1].replace("org_a", "org_b"), str(expires), sig),  # another file
        (*good, None, sig), (*good, str(expires), None), (*good, "", ""), (*good, "-5", sig),
        (*good, "1e9", sig), (*good, str(expires), sig + "00"), (*good, "9" * 40, sig),
    ]
    for case in tampered:
        assert refused(*case) == "invalid_download_link", case
    # another secret: another signature
    assert LinkSigner(b"j" * 32).signature(*good, expires) != sig


def test_short_secrets_are_refused():
    with pytest.raises(ValueError):
        LinkSigner(b"short")


def test_the_secret_comes_from_the_admin_token_or_one_private_file(tmp_path):
    state = tmp_path / "state"
    assert link_secret("fg-admin-a", state) == link_secret("fg-admin-a", tmp_path / "elsewhere")
    assert link_secret("fg-admin-a", state) != link_secret("fg-admin-b", state)
    assert not state.exists()  # with a token, nothing is written
    secrets_seen: list[bytes] = []
    barrier = threading.Barrier(8)

    def start() -> None:
        barrier.wait()
        secrets_seen.append(link_secret(None, state))

    threads = [threading.Thread(target=start) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(secrets_seen)) == 1 and len(secrets_seen[0]) == 32  # concurrent starters agree
    files = [p.name for p in state.iterdir()]
    assert files == ["export-links.key"]  # no temporary file left behind
    assert stat.S_IMODE(os.stat(state / "export-links.key").st_mode) == 0o600
    assert link_secret(None, state) == secrets_seen[0]  # stable across restarts
    (state / "export-links.key").write_text("not hex")
    with pytest.raises(ConfigError):
        link_secret(None, state)
