"""Download links for finished exports: S3 pre-signed URLs (AWS SigV4, query-string form) and, for a local
lake, gateway URLs signed with HMAC-SHA256, both expiring; neither needs an Authorization header.

SigV4 is implemented here with hashlib/hmac (botocore is a test dependency only), exactly as botocore's
`generate_presigned_url` does it: tests/unit/test_presign.py compares the two byte for byte.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote, urlsplit

from aiohttp import web

from analytics_lake.location import Lake
from gateway.errors import ConfigError, PermissionDenied
from gateway.settings import Settings

MAX_EXPIRES_S = 7 * 24 * 3600  # SigV4's own limit
ALGORITHM = "AWS4-HMAC-SHA256"
_SERVICE = "s3"
SECRET_FILE = "export-links.key"  # in the state dir, when there is no admin token to derive the secret from
_DERIVATION_LABEL = b"fleetgate export download links v1"


def _quote(value: str, safe: str = "-_.~") -> str:
    return quote(value, safe=safe)


def _hmac(key: bytes, message: str) -> bytes:
    return hmac.new(key, message.encode(), hashlib.sha256).digest()


def check_expires(expires_s: int) -> int:
    if isinstance(expires_s, bool) or not isinstance(expires_s, int) or not 1 <= expires_s <= MAX_EXPIRES_S:
        raise ConfigError(f"a download link's lifetime {expires_s!r} is invalid: expected 1 to {MAX_EXPIRES_S} s")
    return expires_s


@dataclass(frozen=True, slots=True)
class S3Presigner:
    """Pre-signs GET URLs for objects in one S3(-compatible) service.

    Args:
        endpoint: `http(s)://host[:port]` of an S3-compatible service (path-style URLs, as the lake's
            pyarrow filesystem uses), or None for AWS (virtual-hosted `https://BUCKET.s3.REGION.amazonaws.com`).
        region: the signing region.
        access_key, secret_key: static credentials (pre-signing needs them).
    """

    endpoint: str | None
    region: str
    access_key: str
    secret_key: str = field(repr=False)

    def _location(self, bucket: str, key: str) -> tuple[str, str, str]:
        """(scheme, host, canonical path) of the object."""
        path_key = "/" + _quote(key, safe="/~")
        if self.endpoint is not None:
            parts = urlsplit(self.endpoint if "://" in self.endpoint else f"https://{self.endpoint}")
            return parts.scheme or "https", parts.netloc, f"/{_quote(bucket)}{path_key}"
        if "." in bucket:  # a dotted name breaks the wildcard TLS certificate of virtual hosts
            return "https", f"s3.{self.region}.amazonaws.com", f"/{_quote(bucket)}{path_key}"
        return "https", f"{bucket}.s3.{self.region}.amazonaws.com", path_key

    def url(self, bucket: str, key: str, *, expires_s: int, now: datetime | None = None) -> str:
        """A GET URL for `bucket/key`, valid `expires_s` seconds (1 s to 7 days) from `now`."""
        check_expires(expires_s)
        moment = (now or datetime.now(UTC)).astimezone(UTC)
        amz_date = moment.strftime("%Y%m%dT%H%M%SZ")
        day = amz_date[:8]
        scope = f"{day}/{self.region}/{_SERVICE}/aws4_request"
        scheme, host, path = self._location(bucket, key)
        params = {
            "X-Amz-Algorithm": ALGORITHM,
            "X-Amz-Credential": f"{self.access_key}/{scope}",
            "X-Amz-Date": amz_date,
            "X-Amz-Expires": str(expires_s),
            "X-Amz-SignedHeaders": "host",
        }
        query = "&".join(f"{_quote(k)}={_quote(v)}" for k, v in sorted(params.items()))
        canonical = "\n".join(["GET", path, query, f"host:{host}", "", "host", "UNSIGNED-PAYLOAD"])
        to_sign = "\n".join([ALGORITHM, amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
        key_bytes = _hmac(_hmac(_hmac(_hmac(f"AWS4{self.secret_key}".encode(), day), self.region), _SERVICE),
                          "aws4_request")
        signature = hmac.new(key_bytes, to_sign.encode(), hashlib.sha256).hexdigest()
        return f"{scheme}://{host}{path}?{query}&X-Amz-Signature={signature}"


class LinkSigner:
    """Signs and checks the gateway's own download links (`…/file?expires=…&sig=…`) for local lakes.

    The signature covers the job id, the object's path and the expiry, so a link opens one file until
    it expires; any change to it is refused."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 32:
            raise ValueError("the link-signing secret must be at least 32 bytes")
        self._secret = secret

    def signature(self, job_id: str, object_path: str, expires: int) -> str:
        message = f"{job_id}\n{object_path}\n{expires}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    def sign(self, job_id: str, object_path: str, *, expires_s: int, now: datetime | None = None) -> tuple[int, str]:
        """(expires as epoch seconds, signature) for a link valid `expires_s` from `now`."""
        expires = int((now or datetime.now(UTC)).timestamp()) + check_expires(expires_s)
        return expires, self.signature(job_id, object_path, expires)

    def verify(self, job_id: str, object_path: str, expires: str | None, sig: str | None,
               *, now: datetime | None = None) -> None:
        """Raise PermissionDenied (403) unless `sig` is this link's signature and it has not expired."""
        if not expires or not sig or not expires.isdigit() or len(expires) > 12 or len(sig) != 64:
            raise PermissionDenied("This download link is incomplete or malformed.", code="invalid_download_link")
        wanted = self.signature(job_id, object_path, int(expires))
        if not hmac.compare_digest(wanted, sig.lower()):
            raise PermissionDenied("This download link's signature is invalid.", code="invalid_download_link")
        if int(expires) <= int((now or datetime.now(UTC)).timestamp()):
            raise PermissionDenied("This download link has expired; ask for a new one.", code="download_link_expired")


def link_secret(admin_token: str | None, state_dir: Path) -> bytes:
    """The secret links are signed with: derived from the admin token (every replica shares it), else a
    random key kept in the state dir (created once, private to this user)."""
    if admin_token:
        return hmac.new(admin_token.encode(), _DERIVATION_LABEL, hashlib.sha256).digest()
    path = Path(state_dir) / SECRET_FILE
    if not path.exists():
        # Written whole under a temporary name, then linked into place: a concurrent starter (another
        # worker) either wins the link or reads the winner's complete key.
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = path.with_name(f".{SECRET_FILE}.{secrets.token_hex(8)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, secrets.token_hex(32).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)
        finally:
            tmp.unlink()
    text = path.read_text().strip()
    try:
        secret = bytes.fromhex(text)
    except ValueError as e:
        raise ConfigError(f"the export link key {path} is not hex: remove it and restart") from e
    if len(secret) < 32:
        raise ConfigError(f"the export link key {path} is too short: remove it and restart")
    return secret


class DownloadLinks:
    """Fresh download links for finished exports: S3 pre-signed URLs when the lake is on S3 with static
    keys, else gateway links (`/analytics/v1/exports/{id}/file`) signed by `signer`."""

    def __init__(self, lake: Lake, signer: LinkSigner, *, presigner: S3Presigner | None, ttl_s: int) -> None:
        self.lake = lake
        self.signer = signer
        self.presigner = presigner
        self.ttl_s = check_expires(ttl_s)

    @classmethod
    def from_settings(cls, settings: Settings, lake: Lake) -> DownloadLinks:
        config = lake.config
        presigner = None
        if not lake.is_local and config.s3_access_key and config.s3_secret_key:
            presigner = S3Presigner(endpoint=config.s3_endpoint, region=config.s3_region,
                                    access_key=config.s3_access_key, secret_key=config.s3_secret_key)
        return cls(lake, LinkSigner(link_secret(settings.admin_token, settings.state_dir)), presigner=presigner,
                   ttl_s=settings.export_link_ttl_s)

    def link(self, job_id: str, object_path: str, *, base_url: str,
             now: datetime | None = None) -> tuple[str, datetime]:
        """(URL, when it expires) for the object of job `job_id`; `base_url` is the gateway as the caller reached it."""
        moment = (now or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0)
        if self.presigner is not None:
            bucket, _, key = object_path.partition("/")
            return self.presigner.url(bucket, key, expires_s=self.ttl_s, now=moment), \
                moment + timedelta(seconds=self.ttl_s)
        expires, sig = self.signer.sign(job_id, object_path, expires_s=self.ttl_s, now=moment)
        url = f"{base_url.rstrip('/')}/analytics/v1/exports/{quote(job_id)}/file?expires={expires}&sig={sig}"
        return url, datetime.fromtimestamp(expires, UTC)


LINKS: web.AppKey[DownloadLinks] = web.AppKey("analytics_download_links", DownloadLinks)
