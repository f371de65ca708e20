"""``strongroom encrypt`` / ``strongroom decrypt``: client-side encryption of files and streams of any size.

The message format is the AWS Encryption SDK's (the ``aws-encryption-sdk`` library does all of the
cryptography): a data key from the cluster's KMS API (``GenerateDataKey`` on the KMS gateway, ``strongroom
up --kms``) encrypts the data in frames, each authenticated (AES-256-GCM, key commitment), in order, the last
one marked final, the whole message signed (ECDSA P-384); the data key travels in the header encrypted under
the KMS key, with the encryption context. So a file made here opens with the AWS Encryption SDK and its CLI
pointed at the same endpoint, and the reverse.

* ``encrypt --key KEY [--context k=v ...] IN OUT`` and ``decrypt [--key KEY ...] [--context k=v ...] IN OUT``;
  ``-`` is stdin / stdout. ``decrypt --context`` names pairs the message must carry (checked on the header,
  before any plaintext is written).
* Streaming, constant memory: frames of ``--frame-size`` bytes (64 KiB) go through one at a time; a decrypt
  refuses a message whose frames (or whose unframed body) are larger than :data:`MAX_BODY_BYTES`, which would
  otherwise be read whole.
* A file OUT is written under a temporary name beside it and renamed when everything verified: a truncated,
  altered or mis-keyed input leaves no OUT behind. With OUT ``-`` plaintext is written as frames verify and
  the signature is checked at the end: a consumer must honour the exit status.
* A progress line on stderr when stderr is a terminal.
* Where the KMS API is: ``--endpoint``, else ``$STRONGROOM_KMS_ENDPOINT``, else the gateway of ``--dir`` /
  ``$STRONGROOM_DIR`` (its kms.toml); its CA: ``--ca-bundle``, ``$AWS_CA_BUNDLE``, or that directory's CA.
  Credentials: the AWS chain (``AWS_ACCESS_KEY_ID`` …), else the directory's local access key.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from strongroom.cli.context import AddCommand, Context
from strongroom.cli.output import CliError, emit

DEFAULT_FRAME_BYTES = 64 * 1024
#: The largest frame (or unframed body) a decrypt reads into memory; larger messages are refused.
MAX_BODY_BYTES = 4 * 1024 * 1024
CHUNK_BYTES = 1024 * 1024
#: Encrypted data keys a message may carry (an unbounded list costs a KMS call each): AWS's advice is a small cap.
MAX_ENCRYPTED_DATA_KEYS = 8
MAX_CONTEXT_PAIRS = 32
PROGRESS_SECONDS = 0.2


@dataclass
class Endpoint:
    url: str | None
    ca_bundle: str | None
    region: str | None
    account_id: str | None
    credentials: tuple[str, str] | None


def _directory(args: argparse.Namespace) -> Path | None:
    path = getattr(args, "dir", None) or os.environ.get("STRONGROOM_DIR")
    return Path(path).resolve() if path else None


def _endpoint(args: argparse.Namespace) -> Endpoint:
    """Where the KMS API is and how to trust it, from the options, the environment, or the cluster directory."""
    url = args.endpoint or os.environ.get("STRONGROOM_KMS_ENDPOINT")
    ca_bundle = args.ca_bundle
    region = args.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    account_id = credentials = None
    root = _directory(args)
    if root is not None and (root / "kms.toml").exists():
        from strongroom.kms import local
        from strongroom.kms.config import ConfigError, GatewayConfig

        try:
            config = GatewayConfig.load(root / local.CONFIG_FILE, validate=False)
        except ConfigError as exc:
            raise CliError(str(exc)) from None
        url = url or local.endpoint(config)
        if url == local.endpoint(config):
            # The directory's own gateway: its certificate is from the directory's CA (AWS_CA_BUNDLE may name
            # the system's bundle, which does not hold it).
            ca_bundle = ca_bundle or local.ca_bundle(root, config)
        region = region or config.kms.region
        account_id = config.kms.account_id
        if not os.environ.get("AWS_ACCESS_KEY_ID") and (root / local.ACCESS_KEY_FILE).exists():
            credentials = _local_access_key(root / local.ACCESS_KEY_FILE)
    if url is None and not os.environ.get("AWS_ENDPOINT_URL_KMS") and not os.environ.get("AWS_ENDPOINT_URL"):
        raise CliError("no KMS endpoint: give --endpoint URL, set STRONGROOM_KMS_ENDPOINT, or --dir DIR of a cluster "
                       "started with `strongroom up --kms`")
    return Endpoint(url, ca_bundle or os.environ.get("AWS_CA_BUNDLE"), region, account_id, credentials)


def _local_access_key(path: Path) -> tuple[str, str]:
    """The access key `strongroom up --kms` made for local use (DIR/kms/access-key.json)."""
    import json

    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CliError(f"cannot read the local access key {path}: {exc}") from None
    if not isinstance(record, dict) or not all(isinstance(record.get(k), str)
                                               for k in ("access_key_id", "secret_access_key")):
        raise CliError(f"{path} holds no access key")
    return record["access_key_id"], record["secret_access_key"]


def _session(endpoint: Endpoint) -> Any:
    import botocore.session

    if endpoint.url is not None:
        # The master-key providers build their own KMS clients; botocore's service endpoint variable reaches
        # all of them (this process only).
        os.environ["AWS_ENDPOINT_URL_KMS"] = endpoint.url
    session = botocore.session.Session()
    if endpoint.ca_bundle:
        session.set_config_variable("ca_bundle", endpoint.ca_bundle)
    if endpoint.region:
        session.set_config_variable("region", endpoint.region)
    if endpoint.credentials is not None:
        session.set_credentials(*endpoint.credentials)
    return session


def _context(pairs: list[str] | None) -> dict[str, str]:
    context: dict[str, str] = {}
    for item in pairs or []:
        name, equals, value = item.partition("=")
        if not equals or not name:
            raise CliError(f"--context takes KEY=VALUE, not {item!r}")
        if name.startswith("aws-crypto-"):
            raise CliError("context keys beginning with aws-crypto- are reserved for the message format")
        context[name] = value
    if len(context) > MAX_CONTEXT_PAIRS:
        raise CliError(f"at most {MAX_CONTEXT_PAIRS} --context pairs")
    return context


def _sdk() -> Any:
    try:
        # The SDK ships no type information (no py.typed, no stubs package).
        import aws_encryption_sdk  # type: ignore[import-untyped]
    except ImportError:
        raise CliError("encrypt/decrypt need the AWS Encryption SDK: pip install 'strongroom[encrypt]'") from None
    # The SDK logs every failure with a traceback (logging.exception) before raising it; the CLI reports the
    # error itself, in one line.
    sdk_log = logging.getLogger("aws_encryption_sdk")
    sdk_log.addHandler(logging.NullHandler())
    sdk_log.propagate = False
    return aws_encryption_sdk


# --- input, output, progress ------------------------------------------------------------------------------


class _Progress:
    """A one-line progress report on a terminal (stderr); nothing otherwise."""

    def __init__(self, stream: IO[str], total: int | None, verb: str, enabled: bool) -> None:
        self._stream, self._total, self._verb, self.enabled = stream, total, verb, enabled
        self._start = self._last = time.monotonic()
        self.done = 0

    def add(self, count: int) -> None:
        self.done += count
        now = time.monotonic()
        if self.enabled and now - self._last >= PROGRESS_SECONDS:
            self._last = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        rate = self.done / max(now - self._start, 1e-6)
        text = f"{self._verb} {_size(self.done)}"
        if self._total:
            share = min(self.done / self._total, 1.0)
            filled = int(share * 30)
            text = f"{self._verb} [{'#' * filled}{'.' * (30 - filled)}] {share:4.0%} {_size(self.done)}" \
                   f" of {_size(self._total)}"
        self._stream.write(f"\r{text}, {_size(int(rate))}/s   ")
        self._stream.flush()

    def finish(self) -> None:
        if self.enabled:
            self._draw(time.monotonic())
            self._stream.write("\n")
            self._stream.flush()


def _size(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


class _Counting:
    """A binary reader that reports what it reads (the encryptor reads the plaintext through it)."""

    def __init__(self, raw: IO[bytes], progress: _Progress) -> None:
        self._raw, self._progress = raw, progress

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
        self._progress.add(len(data))
        return data

    def close(self) -> None:
        pass  # the command closes what it opened


@contextmanager
def _input(name: str) -> Iterator[tuple[IO[bytes], int | None]]:
    if name == "-":
        yield sys.stdin.buffer, None
        return
    try:
        handle = open(name, "rb")
    except OSError as exc:
        raise CliError(f"cannot read {name}: {exc.strerror or exc}") from None
    with handle:
        info = os.fstat(handle.fileno())
        yield handle, info.st_size if os.path.isfile(name) else None


@contextmanager
def _output(name: str, source: str, *, private: bool) -> Iterator[IO[bytes]]:
    """stdout, or a temporary file beside OUT renamed to OUT only when the block ends without an error."""
    if name == "-":
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    target = Path(name)
    if source != "-" and target.exists() and os.path.samefile(source, target):
        raise CliError("IN and OUT are the same file")
    try:
        descriptor, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial",
                                                 dir=target.parent if str(target.parent) else ".")
    except OSError as exc:
        raise CliError(f"cannot write beside {name}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(descriptor, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        if not private:  # ciphertext: the permissions a new file gets here (mkstemp made it 0600)
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(temporary, 0o666 & ~umask)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


# --- the commands --------------------------------------------------------------------------------------------


def _failure(action: str, name: str, exc: BaseException) -> CliError:
    """One line for what went wrong; never a traceback."""
    from botocore.exceptions import BotoCoreError, ClientError
    from cryptography.exceptions import InvalidSignature, InvalidTag

    if isinstance(exc, InvalidTag | InvalidSignature):
        reason = "it failed authentication: the file was altered, truncated or is not this format"
    elif isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        reason = f"the KMS API refused: {error.get('Code')}: {error.get('Message')}"
    elif isinstance(exc, BotoCoreError):
        reason = f"the KMS API could not be reached: {exc}"
    elif type(exc).__name__ == "SerializationError":  # the SDK's: the bytes are not a whole message
        reason = f"it is truncated or malformed ({exc})"
    else:
        detail = str(exc) or type(exc).__name__
        cause = exc.__cause__
        if cause is not None and not isinstance(cause, InvalidTag | InvalidSignature):
            detail += f" ({cause})"
        reason = f"{type(exc).__name__}: {detail}"
    return CliError(f"cannot {action} {name}: {reason}")


def _pump(stream: Any, out: IO[bytes]) -> int:
    written = 0
    while True:
        chunk = stream.read(CHUNK_BYTES)
        if not chunk:
            return written
        out.write(chunk)
        written += len(chunk)


def cmd_encrypt(args: argparse.Namespace, _ctx: Context) -> None:
    esdk = _sdk()
    context = _context(args.context)
    if not 0 < args.frame_size <= MAX_BODY_BYTES:
        raise CliError(f"--frame-size is 1 to {MAX_BODY_BYTES} bytes")
    session = _session(_endpoint(args))
    client = esdk.EncryptionSDKClient(commitment_policy=esdk.CommitmentPolicy.REQUIRE_ENCRYPT_REQUIRE_DECRYPT,
                                      max_encrypted_data_keys=MAX_ENCRYPTED_DATA_KEYS)
    provider = esdk.StrictAwsKmsMasterKeyProvider(key_ids=[args.key], botocore_session=session)
    with _input(args.input) as (source, total):
        progress = _Progress(sys.stderr, total, "encrypting", sys.stderr.isatty() and not args.json)
        try:
            with _output(args.output, args.input, private=False) as out, client.stream(
                    mode="e", source=_Counting(source, progress), key_provider=provider, encryption_context=context,
                    frame_length=args.frame_size) as encryptor:
                written = _pump(encryptor, out)
                key_id = encryptor.header.encrypted_data_keys
        except CliError:
            raise
        except Exception as exc:  # noqa: BLE001 - the SDK, botocore and cryptography raise many kinds; one line
            raise _failure("encrypt", args.input, exc) from None
        finally:
            progress.finish()
    keys = sorted(key.key_provider.key_info.decode() for key in key_id)
    _report(args, {"input": args.input, "output": args.output, "plaintext_bytes": progress.done,
                   "ciphertext_bytes": written, "keys": keys, "encryption_context": context},
            f"encrypted {_size(progress.done)} under {', '.join(keys)}")


def cmd_decrypt(args: argparse.Namespace, _ctx: Context) -> None:
    esdk = _sdk()
    required = _context(args.context)
    endpoint = _endpoint(args)
    session = _session(endpoint)
    client = esdk.EncryptionSDKClient(commitment_policy=esdk.CommitmentPolicy.REQUIRE_ENCRYPT_REQUIRE_DECRYPT,
                                      max_encrypted_data_keys=MAX_ENCRYPTED_DATA_KEYS)
    if args.key:
        provider = esdk.StrictAwsKmsMasterKeyProvider(key_ids=[_arn(session, key) for key in args.key],
                                                      botocore_session=session)
    else:
        discovery = None
        if endpoint.account_id:
            # The local gateway's account only: a message naming a key elsewhere is not sent anywhere.
            discovery = esdk.key_providers.kms.DiscoveryFilter(account_ids=[endpoint.account_id], partition="aws")
        provider = esdk.DiscoveryAwsKmsMasterKeyProvider(discovery_filter=discovery, botocore_session=session)
    with _input(args.input) as (source, total):
        progress = _Progress(sys.stderr, total, "decrypting", sys.stderr.isatty() and not args.json)
        try:
            with _output(args.output, args.input, private=True) as out, client.stream(
                    mode="d", source=_Counting(source, progress), key_provider=provider,
                    max_body_length=MAX_BODY_BYTES) as decryptor:
                found = dict(decryptor.header.encryption_context)
                missing = {k: v for k, v in required.items() if found.get(k) != v}
                if missing:
                    raise CliError(f"cannot decrypt {args.input}: its encryption context does not hold "
                                   f"{', '.join(f'{k}={v}' for k, v in sorted(missing.items()))}")
                written = _pump(decryptor, out)
                if source.read(1):
                    raise CliError(f"cannot decrypt {args.input}: data follows the end of the message")
        except CliError:
            raise
        except Exception as exc:  # noqa: BLE001 - the SDK, botocore and cryptography raise many kinds; one line
            raise _failure("decrypt", args.input, exc) from None
        finally:
            progress.finish()
    context = {k: v for k, v in found.items() if not k.startswith("aws-crypto-")}
    _report(args, {"input": args.input, "output": args.output, "ciphertext_bytes": progress.done,
                   "plaintext_bytes": written, "encryption_context": context},
            f"decrypted {_size(written)}")


def _arn(session: Any, key: str) -> str:
    """A key ARN (what a strict provider matches messages against), asking the KMS API for aliases and ids."""
    if key.startswith("arn:"):
        return key
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        client = boto3.session.Session(botocore_session=session).client("kms")
        return str(client.describe_key(KeyId=key)["KeyMetadata"]["Arn"])
    except (BotoCoreError, ClientError) as exc:
        raise _failure("find the key", key, exc) from None


def _report(args: argparse.Namespace, data: dict[str, Any], text: str) -> None:
    """The summary; on stderr when the data went to stdout (nothing may follow it there)."""
    if args.output == "-":
        if args.json:
            import json

            print(json.dumps({"error_code": 0, "data": data}), file=sys.stderr)
        return
    emit(data, as_json=args.json, text=text)


def register(sub: Any, add: AddCommand) -> None:
    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("input", metavar="IN", help="the file to read (- : stdin)")
        p.add_argument("output", metavar="OUT", help="the file to write (- : stdout)")
        p.add_argument("--endpoint", help="the KMS API (default: $STRONGROOM_KMS_ENDPOINT, or the gateway of --dir)")
        p.add_argument("--ca-bundle", help="the CA that verifies it (default: $AWS_CA_BUNDLE, or the cluster's CA)")
        p.add_argument("--region", help="the region (default: $AWS_REGION, or the gateway's)")

    p = add(sub, "encrypt", cmd_encrypt, "encrypt a file or stream (AWS Encryption SDK format, a data key from the "
                                         "cluster's KMS API)")
    p.add_argument("--key", required=True, help="the KMS key: key id, ARN, or alias/NAME")
    p.add_argument("--context", action="append", metavar="KEY=VALUE",
                   help="encryption context: authenticated, stored in clear in the header (repeatable)")
    p.add_argument("--frame-size", type=int, default=DEFAULT_FRAME_BYTES,
                   help=f"plaintext bytes per authenticated frame (default {DEFAULT_FRAME_BYTES})")
    common(p)
    p = add(sub, "decrypt", cmd_decrypt, "decrypt what `strongroom encrypt` or the AWS Encryption SDK made")
    p.add_argument("--key", action="append", metavar="KEY",
                   help="accept only messages under this KMS key (repeatable; default: any key of the endpoint's "
                        "account)")
    p.add_argument("--context", action="append", metavar="KEY=VALUE",
                   help="a pair the message's encryption context must hold (repeatable)")
    common(p)
