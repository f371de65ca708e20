"""AWS Signature Version 4 on the server side: everything but the final HMAC comparison.

The gateway never holds access-key secrets. :func:`prepare` parses the ``Authorization``
header, runs every check that needs no secret (scope, clock skew, signed headers, body
hash), recomputes the canonical request from the raw request and returns the string to sign;
the gateway then checks the signature with the day's derived signing key that the node issued
(:func:`matches`, ``kms.sigv4.signing_key``, cached by :mod:`.signing_keys`), or the node
derives it from the secret and compares (``kms.sigv4.verify``: with the cache off, and for a
signature the cached key does not match). The checks and their AWS error codes, in order:

=======================================  =====================================
no ``Authorization`` header              MissingAuthenticationTokenException
header does not parse                    IncompleteSignatureException
no/bad ``X-Amz-Date``                    IncompleteSignatureException
scope service is not ``kms``             InvalidSignatureException
scope region is not this endpoint's      InvalidSignatureException
scope terminator is not ``aws4_request`` InvalidSignatureException
scope date differs from X-Amz-Date       InvalidSignatureException
X-Amz-Date more than 5 min off           InvalidSignatureException ("Signature expired: …")
``host``, ``x-amz-date``, ``x-amz-target``
and ``content-type`` not all signed      InvalidSignatureException
``X-Amz-Content-Sha256`` != body hash    InvalidSignatureException
``X-Amz-Security-Token`` present         UnrecognizedClientException (we issue no session tokens)
access key unknown (node)                UnrecognizedClientException
signature mismatch                       InvalidSignatureException
=======================================  =====================================

Requiring ``x-amz-target`` and ``content-type`` in the signed headers (botocore always signs
them) means the operation cannot be swapped after signing; the body is bound by its hash.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import hmac
import posixpath
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import quote, unquote

from strongroom.kms.errors import IncompleteSignature, InvalidSignature, MissingAuthenticationToken, UnrecognizedClient

ALGORITHM = "AWS4-HMAC-SHA256"
SERVICE = "kms"
TERMINATOR = "aws4_request"
AMZ_DATE_FORMAT = "%Y%m%dT%H%M%SZ"
DEFAULT_MAX_SKEW = 300.0
REQUIRED_SIGNED = ("host", "x-amz-date", "x-amz-target", "content-type")
MISMATCH_MESSAGE = ("The request signature we calculated does not match the signature you provided. "
                    "Check your AWS Secret Access Key and signing method. "
                    "Consult the service documentation for details.")
UNKNOWN_KEY_MESSAGE = "The security token included in the request is invalid."
_SIGNATURE_RE = re.compile(r"^[0-9a-f]{64}\Z")
_SPACES = re.compile(r"\s+")
MAX_AUTHORIZATION = 2048


@dataclass(frozen=True)
class Authorization:
    access_key_id: str
    date: str
    region: str
    service: str
    terminator: str
    signed_headers: tuple[str, ...]
    signature: str

    @property
    def scope(self) -> str:
        return f"{self.date}/{self.region}/{self.service}/{self.terminator}"


@dataclass(frozen=True)
class Prepared:
    """What the node needs to finish the check (``kms.sigv4.verify``)."""

    access_key_id: str
    date: str
    region: str
    service: str
    string_to_sign: str
    signature: str


class Headers:
    """Case-insensitive header access over a list of (name, value) pairs as received."""

    def __init__(self, items: Iterable[tuple[str, str]]) -> None:
        self._values: dict[str, list[str]] = {}
        for name, value in items:
            self._values.setdefault(name.lower(), []).append(value)

    def get(self, name: str) -> str | None:
        values = self._values.get(name.lower())
        return None if not values else values[0]

    def getall(self, name: str) -> list[str]:
        return self._values.get(name.lower(), [])


def parse_authorization(header: str, has_date: bool = True) -> Authorization:
    if len(header) > MAX_AUTHORIZATION:
        raise IncompleteSignature("The Authorization header is too long.")
    algorithm, _, rest = header.strip().partition(" ")
    if algorithm != ALGORITHM:
        raise IncompleteSignature(f"Unsupported AWS 'algorithm': '{algorithm}'")
    fields: dict[str, str] = {}
    for part in (p.strip() for p in rest.split(",")):
        if not part:
            continue
        name, equals, value = part.partition("=")
        if not equals:
            raise IncompleteSignature(
                f"'{part}' not a valid key=value pair (missing equal-sign) in Authorization header: '{header}'.")
        fields[name.strip()] = value.strip()
    missing = [f"Authorization header requires '{name}' parameter."
               for name in ("Credential", "Signature", "SignedHeaders") if not fields.get(name)]
    if not has_date:
        missing.append("Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header.")
    if missing:
        raise IncompleteSignature(" ".join(missing) + f" Authorization={header}")
    credential = fields["Credential"].split("/")
    if len(credential) != 5 or not all(credential):
        raise IncompleteSignature(
            f"Credential should be scoped to a valid region, not a malformed scope: '{fields['Credential']}'.")
    access_key_id, date, region, service, terminator = credential
    signed = tuple(fields["SignedHeaders"].split(";"))
    return Authorization(access_key_id, date, region, service, terminator, signed, fields["Signature"])


def _canonical_uri(raw_path: str) -> str:
    if raw_path == "/":  # every KMS request: no unquoting and normalizing to do
        return "/"
    path = unquote(raw_path) or "/"
    normalized = posixpath.normpath(path)
    if path.endswith("/") and normalized != "/":
        normalized += "/"
    if normalized.startswith("//"):
        normalized = "/" + normalized.lstrip("/")
    return quote(normalized, safe="/~")


def _canonical_query(raw_query: str) -> str:
    if not raw_query:  # KMS requests carry none
        return ""
    pairs = []
    for part in raw_query.split("&"):
        if not part:
            continue
        name, _, value = part.partition("=")
        pairs.append((quote(unquote(name), safe="-_.~"), quote(unquote(value), safe="-_.~")))
    return "&".join(f"{k}={v}" for k, v in sorted(pairs))


def _trimmed(value: str) -> str:
    """SigV4's header value: trimmed, each run of whitespace one space. Without a run of spaces or any other
    whitespace (str.isprintable is false for every whitespace character but the ASCII space) nothing changes:
    the regular expression is skipped."""
    value = value.strip()
    return _SPACES.sub(" ", value) if "  " in value or not value.isprintable() else value


def canonical_request(method: str, raw_path: str, raw_query: str, headers: Headers,
                      signed_headers: Iterable[str], payload_hash: str) -> str:
    signed = list(signed_headers)
    lines = [method.upper(), _canonical_uri(raw_path), _canonical_query(raw_query)]
    canonical_headers = ""
    for name in signed:
        values = [_trimmed(v) for v in headers.getall(name)]
        canonical_headers += f"{name}:{','.join(values)}\n"
    lines += [canonical_headers, ";".join(signed), payload_hash]
    return "\n".join(lines)


def string_to_sign(amz_date: str, scope: str, canonical: str) -> str:
    return "\n".join([ALGORITHM, amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])


@functools.lru_cache(maxsize=64)
def _amz_moment(amz_date: str) -> dt.datetime:
    """X-Amz-Date as a UTC datetime; ValueError when it is not one. Cached: concurrent requests sign
    within the same seconds, and strptime costs more than the rest of the checks (a date that does
    not parse raises, and is not cached)."""
    return dt.datetime.strptime(amz_date, AMZ_DATE_FORMAT).replace(tzinfo=dt.UTC)


def _fmt(moment: dt.datetime) -> str:
    return moment.strftime(AMZ_DATE_FORMAT)


def prepare(method: str, raw_path: str, raw_query: str, headers: Headers, body: bytes, *, region: str,
            max_skew: float = DEFAULT_MAX_SKEW, now: Callable[[], dt.datetime] | None = None) -> Prepared:
    """Every check but the secret's; returns the string to sign for the node to verify."""
    header = headers.get("authorization")
    if header is None:
        raise MissingAuthenticationToken("Missing Authentication Token")
    amz_date = headers.get("x-amz-date")
    auth = parse_authorization(header, has_date=amz_date is not None)
    assert amz_date is not None
    try:
        moment = _amz_moment(amz_date)
    except ValueError:
        raise IncompleteSignature(f"Date must be in ISO-8601 'basic format'. Got '{amz_date}'. "
                                  "See http://en.wikipedia.org/wiki/ISO_8601") from None
    if auth.service != SERVICE:
        raise InvalidSignature(f"Credential should be scoped to correct service: '{SERVICE}'. ")
    if auth.region != region:
        raise InvalidSignature(f"Credential should be scoped to a valid region, not '{auth.region}'. ")
    if auth.terminator != TERMINATOR:
        raise InvalidSignature(
            f"Credential should be scoped with a valid terminator: '{TERMINATOR}', not '{auth.terminator}'. ")
    if auth.date != amz_date[:8]:
        raise InvalidSignature(
            "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: "
            f"'{auth.date}' != '{amz_date[:8]}', from '{amz_date}'.")
    current = now() if now is not None else dt.datetime.now(dt.UTC)
    skew = dt.timedelta(seconds=max_skew)
    if moment < current - skew:
        raise InvalidSignature(f"Signature expired: {amz_date} is now earlier than {_fmt(current - skew)} "
                               f"({_fmt(current)} - {max_skew / 60:g} min.)")
    if moment > current + skew:
        raise InvalidSignature(f"Signature not yet current: {amz_date} is still later than {_fmt(current + skew)} "
                               f"({_fmt(current)} + {max_skew / 60:g} min.)")
    signed = set(auth.signed_headers)
    if "host" not in signed:
        raise InvalidSignature("'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization.")
    for name in REQUIRED_SIGNED[1:]:
        if name not in signed:
            raise InvalidSignature(f"'{name}' must be a 'SignedHeader' in the AWS Authorization.")
    if list(auth.signed_headers) != sorted(signed) or any(not h or h != h.lower() for h in auth.signed_headers):
        raise InvalidSignature(MISMATCH_MESSAGE)
    payload_hash = hashlib.sha256(body).hexdigest()
    declared = headers.get("x-amz-content-sha256")
    if declared is not None and declared != payload_hash:
        raise InvalidSignature("The provided 'x-amz-content-sha256' header does not match what was computed.")
    if headers.get("x-amz-security-token") is not None:
        raise UnrecognizedClient(UNKNOWN_KEY_MESSAGE)
    if not _SIGNATURE_RE.match(auth.signature):
        raise InvalidSignature(MISMATCH_MESSAGE)
    canonical = canonical_request(method, raw_path, raw_query, headers, auth.signed_headers, payload_hash)
    return Prepared(auth.access_key_id, auth.date, auth.region, auth.service,
                    string_to_sign(amz_date, auth.scope, canonical), auth.signature)


def signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    key = hmac.new(("AWS4" + secret).encode(), date.encode(), hashlib.sha256).digest()
    for part in (region, service, TERMINATOR):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


def matches(signing_key: bytes, prepared: Prepared) -> bool:
    """Whether ``prepared``'s signature is the one ``signing_key`` (kSigning) gives, in constant time."""
    expected = hmac.new(signing_key, prepared.string_to_sign.encode(), hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected.encode(), prepared.signature.encode())


def signature(secret: str, prepared: Prepared) -> str:
    """The signature a client with ``secret`` would send (tests; the gateway never holds secrets)."""
    key = signing_key(secret, prepared.date, prepared.region, prepared.service)
    return hmac.new(key, prepared.string_to_sign.encode(), hashlib.sha256).hexdigest()
