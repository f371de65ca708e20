"""The etcd store: a cluster's shared state in etcd 3.4+, through its JSON gateway.

Why it is built this way:

* etcd's data model *is* the :class:`~strongroom.store.base.Store` model, so every
  call maps to one etcd request: reads are linearizable ``/v3/kv/range`` calls,
  and every write (a single put/delete or a whole :meth:`EtcdStore.commit`) is one
  ``/v3/kv/txn`` whose compares are the operations' ``expect``s (``mod_revision``
  equal, or ``create_revision == 0`` for "must not exist"). A write therefore makes
  at most one revision, and a delete of a missing key makes none.
* The txn's *failure* branch reads back every compared key (keys only), so a
  failed commit says atomically which compare failed: the first operation, in the
  caller's order, whose key is not at its ``expect`` is the :class:`ConflictError`.
* It speaks HTTP/JSON (``aiohttp``), not gRPC, so it needs no generated stubs. The
  gateway leaves out false/empty/zero fields and sends 64-bit numbers as strings;
  keys and values are base64. Every request carries ``Grpc-Metadata-hasleader:
  true``: a member that has lost its leader then refuses at once ("no leader")
  instead of holding the request until its own timeout.
* Endpoints are tried in turn, starting with the last one that answered. A
  request moves on to the next endpoint only when it surely was not applied
  (connection refused or not established, no leader on that member, an invalid
  auth token). A write whose fate is unknown (timeout, connection lost after
  sending, etcd's own "request timed out") raises :class:`OutcomeUnknownError`
  and is never retried here: only the caller can check whether it landed.
* Keys live under a namespace prefix (default ``/strongroom/``), added on the way
  in and stripped on the way out, so several clusters can share one etcd.
* The HTTP client is aiohttp, not httpx: measured against etcd's gateway with 8 requests in
  flight under uvloop, httpx spent ~1.3 ms of CPU per request (httpcore's pool bookkeeping and
  a failed ``import`` per request in its async-library detection) and aiohttp ~0.13 ms; a created
  key is one such request (issue 15). The session is made on first use, in the running loop.
* Watches are the gateway's streaming ``/v3/watch`` (newline-delimited JSON). A
  broken stream (member killed, member lost its leader) is resumed on another
  endpoint from the revision after the last one delivered, so the consumer sees
  no gap and no duplicate; if no endpoint takes the watch it raises
  :class:`UnavailableError`.
* With user/password auth, the simple tokens etcd hands out are per member, so
  a token is kept per endpoint and fetched again when etcd calls it invalid
  (expired after ``--auth-token-ttl``, or the member restarted).

Revisions are etcd's own numbers by default (a never-written etcd is at
revision 1, not 0). ``revision_base`` shifts them down: store revision ``r`` is
etcd revision ``r + revision_base``. Tests use it to make a fresh namespace on a
shared etcd look like a fresh store; it is only meaningful when no other writer
uses the same etcd while the store is in use.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import ssl
from collections.abc import AsyncGenerator, AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import aiohttp

from strongroom.metrics import store as store_metrics
from strongroom.store.base import (
    CompactedError,
    ConflictError,
    Delete,
    Listing,
    Operation,
    OutcomeUnknownError,
    Put,
    Record,
    Store,
    StoreError,
    UnavailableError,
    WatchEvent,
)

# Validation is shared with the SQLite backend so both refuse exactly the same inputs.

__all__ = ["EtcdStore"]

#: Keys per page when listing a prefix (etcd answers at most ~1.5 MiB per response).
DEFAULT_PAGE_SIZE = 500

#: Longest answer or watch message taken from a member (etcd's own limit is ~1.5 MiB per request;
#: base64 and JSON make its answers larger). Past it the member is treated as broken.
MAX_ANSWER_BYTES = 64 * 1024 * 1024

_HASLEADER = {"Grpc-Metadata-hasleader": "true"}

# gRPC status codes that etcd's gateway puts in "code".
_INVALID_ARGUMENT = 3
_RESOURCE_EXHAUSTED = 8
_FAILED_PRECONDITION = 9
_OUT_OF_RANGE = 11
_UNAVAILABLE = 14
_PERMISSION_DENIED = 7
_UNAUTHENTICATED = 16

#: Answers after which a request surely was not applied, so another member may take it.
_NO_LEADER_MESSAGES = ("etcdserver: no leader",)

#: Answers that mean the member gave up waiting: a write may or may not have been applied.
_TIMEOUT_MESSAGES = (
    "etcdserver: request timed out",  # also "..., possibly due to previous leader failure" and "... connection lost"
    "etcdserver: leader changed",
    "etcdserver: server stopped",
)

_TOKEN_MESSAGES = ("etcdserver: invalid auth token", "etcdserver: user name is empty")

_COMPACTED_MESSAGE = "required revision has been compacted"


class _EndpointDown(Exception):
    """This endpoint did not take the request, and the request surely was not applied."""

    def __init__(self, endpoint: str, reason: str, *, no_leader: bool = False) -> None:
        super().__init__(f"{endpoint}: {reason}")
        self.no_leader = no_leader


class _EtcdAnswerError(Exception):
    """etcd refused the request with a gRPC status (after the retryable cases were handled)."""

    def __init__(self, endpoint: str, code: int, message: str) -> None:
        super().__init__(f"{endpoint}: {message} (gRPC code {code})")
        self.endpoint = endpoint
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class _Endpoint:
    url: str
    index: int


class EtcdStore(Store):
    """A :class:`Store` in an etcd 3.4+ cluster, reached through its JSON gateway.

    Construction does no I/O; use :meth:`open` to check the cluster (and the
    credentials) now and fail early.

    :param endpoints: client URLs of the members, ``http(s)://host:port``.
    :param namespace: prefix of every key this store reads or writes.
    :param ca_file: CA bundle that signed the members' certificates (https endpoints).
    :param cert_file: client certificate for mutual TLS (with ``key_file``).
    :param username: etcd user; the store authenticates with ``password``.
    :param timeout: seconds to wait for one answer. A write that times out raises
        :class:`OutcomeUnknownError`, a read :class:`UnavailableError`. etcd itself
        gives up on a proposal only after 5 s + 2 election timeouts (7 s by default),
        and a write sent to a follower whose leader just died waits that long; the
        2 s default bounds such a stall (measured: leader killed -> next write accepted ~2 s).
    :param connect_timeout: seconds to wait for a connection before trying the next endpoint.
    :param revision_base: etcd revision that this store calls revision 0 (see the module docstring).
    """

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        namespace: str = "/strongroom/",
        ca_file: str | None = None,
        cert_file: str | None = None,
        key_file: str | None = None,
        username: str | None = None,
        password: str | None = None,
        timeout: float = 2.0,
        election_wait: float = 2.5,
        connect_timeout: float = 1.0,
        revision_base: int = 0,
        page_size: int = DEFAULT_PAGE_SIZE,
    ) -> None:
        if isinstance(endpoints, str):
            endpoints = [endpoints]
        urls = [_check_endpoint(url) for url in endpoints]
        if not urls:
            raise ValueError("EtcdStore needs at least one endpoint")
        if timeout <= 0 or connect_timeout <= 0:
            raise ValueError("timeouts must be positive")
        if (cert_file is None) != (key_file is None):
            raise ValueError("a client certificate needs both cert_file and key_file")
        if (username is None) != (password is None):
            raise ValueError("etcd authentication needs both username and password")
        if revision_base < 0 or page_size < 1:
            raise ValueError("revision_base must be >= 0 and page_size >= 1")
        self._endpoints = [_Endpoint(url, i) for i, url in enumerate(urls)]
        self._namespace = namespace
        self._ns = namespace.encode("utf-8")
        self._username = username
        self._password = password
        self._timeout = timeout
        self._election_wait = election_wait
        self._connect_timeout = connect_timeout
        self._base = revision_base
        self._page_size = page_size
        self._current = 0
        self._tokens: dict[str, str] = {}
        self._token_locks: dict[str, asyncio.Lock] = {}
        self._closed = False
        self._ssl: ssl.SSLContext | bool = (
            _ssl_context(ca_file, cert_file, key_file) if any(u.startswith("https:") for u in urls) else False
        )
        self._http: aiohttp.ClientSession | None = None
        #: Open watch streams: closing the session does not end them, :meth:`close` does.
        self._streams: set[aiohttp.ClientResponse] = set()
        self._unary_timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout, sock_read=timeout)
        self._watch_timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout, sock_read=None)

    @classmethod
    async def open(cls, endpoints: Sequence[str], **kw: Any) -> EtcdStore:
        """Create the store and make one read now, so a bad endpoint or password fails here."""
        store = cls(endpoints, **kw)
        try:
            await store.revision()
        except BaseException:
            await store.close()
            raise
        return store

    @property
    def endpoints(self) -> list[str]:
        return [e.url for e in self._endpoints]

    @property
    def namespace(self) -> str:
        return self._namespace

    def __repr__(self) -> str:
        return f"EtcdStore({self.endpoints!r}, namespace={self._namespace!r})"

    # -- Store interface -------------------------------------------------

    async def get(self, key: str) -> Record | None:
        raw = self._key_bytes(key)
        if not raw:
            self._check_open()
            return None  # etcd has no empty key (only reachable with an empty namespace)
        answer = await self._request("/v3/kv/range", {"key": _b64(raw)}, write=False)
        kvs = answer.get("kvs") or []
        return self._record(kvs[0]) if kvs else None

    async def _apply(self, operations: list[Operation]) -> int:
        return await self._txn(operations)

    async def list_prefix(self, prefix: str) -> Listing:
        """One range at one revision; pages of ``page_size`` keys pinned to the first page's revision."""
        key, end = self._range(prefix)
        for _attempt in range(5):
            records: list[Record] = []
            body: dict[str, Any] = {"key": _b64(key), "range_end": _b64(end), "limit": self._page_size}
            revision: int | None = None
            try:
                while True:
                    answer = await self._request("/v3/kv/range", body, write=False)
                    if revision is None:
                        revision = _int(answer.get("header", {}).get("revision"))
                    kvs = answer.get("kvs") or []
                    records.extend(self._record(kv) for kv in kvs)
                    if not answer.get("more") or not kvs:
                        return Listing(records, self._store_revision(revision))
                    next_key = base64.b64decode(kvs[-1]["key"]) + b"\0"
                    body = {**body, "key": _b64(next_key), "revision": revision}
            except _Compacted:
                continue  # the pinned revision was compacted between pages: list again
        raise UnavailableError("etcd compacted the listing's revision five times in a row; is compaction too eager?")

    async def watch(self, prefix: str, start_revision: int) -> AsyncIterator[WatchEvent]:
        """Stream changes from ``/v3/watch``, resuming on another endpoint if the stream breaks."""
        if start_revision < 1:
            raise ValueError("start_revision must be at least 1")
        self._check_open()
        key, end = self._range(prefix)
        next_revision = start_revision + self._base  # etcd revision of the next event we owe the caller
        failures: list[str] = []  # since a member last took the watch; one round of them is Unavailable
        idle_restarts = 0  # streams in a row that ended without delivering an event: back off
        while True:
            endpoint = self._endpoints[self._current]
            body = {"create_request": {"key": _b64(key), "range_end": _b64(end), "start_revision": next_revision}}
            try:
                async with contextlib.aclosing(self._watch_stream(endpoint, body, next_revision)) as stream:
                    async for events in stream:
                        failures.clear()  # this endpoint took the watch
                        if events:
                            idle_restarts = 0
                        for event in events:
                            yield event
                        if events:
                            next_revision = self._etcd_revision(events[-1].revision) + 1
                # The member ended the stream (e.g. it is shutting down): resume elsewhere.
                failures.append(f"{endpoint.url}: the watch stream ended")
            except _EndpointDown as exc:
                failures.append(str(exc))
            except _EtcdAnswerError as exc:
                _raise_answer_error(exc, write=False)
            except StoreError:
                raise
            except Exception as exc:  # whatever a client torn down by close() throws
                self._check_open()
                raise StoreError(f"etcd watch on {endpoint.url} failed: {_describe(exc)}") from exc
            self._check_open()
            if len(failures) >= len(self._endpoints):
                raise _unavailable(failures)
            self._current = (endpoint.index + 1) % len(self._endpoints)
            if idle_restarts:
                await asyncio.sleep(min(1.0, 0.025 * 2**idle_restarts))
            idle_restarts += 1

    async def revision(self) -> int:
        answer = await self._request("/v3/kv/range", {"key": _b64(self._ns or b"\0"), "count_only": True}, write=False)
        return self._store_revision(_int(answer.get("header", {}).get("revision")))

    async def compact(self, revision: int) -> None:
        """Forget watch history at and below store ``revision`` (keeps every key).

        etcd keeps the events *of* the revision it compacts at, so this compacts
        at ``revision + 1`` when that exists, and at ``revision`` when it is the
        current one.
        """
        current = await self.revision()
        if revision > current:
            raise ValueError(f"cannot compact future revision {revision} (current: {current})")
        target = min(revision + 1, current) + self._base
        if target < 1:
            return
        try:
            await self._request("/v3/kv/compaction", {"revision": target, "physical": True}, write=True)
        except _Compacted:
            pass  # already compacted further than asked

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for response in list(self._streams):
            response.close()
        if self._http is not None:
            await self._http.close()

    def _session(self) -> aiohttp.ClientSession:
        """The HTTP session, made on first use: aiohttp binds it to the running event loop."""
        self._check_open()
        if self._http is None:
            connector = aiohttp.TCPConnector(limit=0, ssl=self._ssl)  # limit=0: a connection per request in flight
            self._http = aiohttp.ClientSession(
                connector=connector,
                trust_env=False,  # never route cluster traffic through an environment proxy
                auto_decompress=False,
            )
        return self._http

    # -- keys, values and revisions --------------------------------------

    def _key_bytes(self, key: str) -> bytes:
        try:
            return self._ns + key.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError(f"key {key!r} cannot be encoded as UTF-8") from exc

    def _key64(self, key: str) -> str:
        return _b64(self._key_bytes(key))

    def _range(self, prefix: str) -> tuple[bytes, bytes]:
        """etcd's ``key``/``range_end`` for every key under ``prefix`` in the namespace."""
        start = self._key_bytes(prefix)
        if not start:
            return b"\0", b"\0"  # etcd: from the smallest key to the end
        return start, _bytes_prefix_end(start)

    def _store_revision(self, etcd_revision: int) -> int:
        return etcd_revision - self._base if etcd_revision else 0

    def _etcd_revision(self, store_revision: int) -> int:
        return store_revision + self._base

    def _record(self, kv: dict[str, Any]) -> Record:
        raw = base64.b64decode(kv.get("key", ""))
        if not raw.startswith(self._ns):
            raise StoreError(f"etcd returned key {raw!r} outside the namespace {self._namespace!r}")
        try:
            key = raw[len(self._ns) :].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise StoreError(f"etcd key {raw!r} in namespace {self._namespace!r} is not UTF-8") from exc
        return Record(
            key=key,
            value=base64.b64decode(kv.get("value", "")),
            version=_int(kv.get("version")),
            create_revision=self._store_revision(_int(kv.get("create_revision"))),
            mod_revision=self._store_revision(_int(kv.get("mod_revision"))),
        )

    # -- writes --------------------------------------------------------------

    async def _txn(self, operations: list[Operation]) -> int:
        compared = [op for op in operations if op.expect is not None]
        compares = []
        for op in compared:
            assert op.expect is not None
            if op.expect == 0:
                compares.append(
                    {"key": self._key64(op.key), "target": "CREATE", "result": "EQUAL", "create_revision": 0}
                )
            else:
                compares.append(
                    {
                        "key": self._key64(op.key),
                        "target": "MOD",
                        "result": "EQUAL",
                        "mod_revision": self._etcd_revision(op.expect),
                    }
                )
        success = []
        for op in operations:
            if isinstance(op, Put):
                success.append({"request_put": {"key": self._key64(op.key), "value": _b64(op.value)}})
            elif isinstance(op, Delete):
                success.append({"request_delete_range": {"key": self._key64(op.key)}})
        # On failure, read back each compared key in the same txn: which compare failed is then exact.
        failure = [{"request_range": {"key": self._key64(op.key), "keys_only": True}} for op in compared]
        body: dict[str, Any] = {"compare": compares, "success": success, "failure": failure}
        answer = await self._request("/v3/kv/txn", body, write=True)
        if answer.get("succeeded"):
            return self._store_revision(_int(answer.get("header", {}).get("revision")))
        raise ConflictError(self._first_conflict(compared, answer.get("responses") or []))

    def _first_conflict(self, compared: list[Operation], responses: list[dict[str, Any]]) -> str:
        for op, response in zip(compared, responses, strict=False):
            kvs = (response.get("response_range") or {}).get("kvs") or []
            current = _int(kvs[0].get("mod_revision")) if kvs else 0
            wanted = 0 if op.expect == 0 else self._etcd_revision(op.expect or 0)
            if current != wanted:
                return op.key
        return compared[0].key  # unreachable with a well-behaved etcd: the compares failed atomically

    # -- HTTP plumbing ---------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"etcd store {self.endpoints} is closed")

    @store_metrics.timed("etcd")
    async def _request(self, path: str, body: dict[str, Any], *, write: bool) -> dict[str, Any]:
        """POST ``body`` to the first endpoint that takes it; etcd errors become store errors.

        When the members that answer have no leader, that is an election (after a leader
        died) or a lost quorum: a write waits up to ``election_wait`` for a leader before
        giving up, so that losing one member stalls writers briefly instead of failing them.
        Reads fail at once: the nodes answer them from their caches meanwhile.
        """
        self._check_open()
        deadline = asyncio.get_running_loop().time() + (self._election_wait if write else 0.0)
        while True:
            failures: list[str] = []
            leaderless = False
            count = len(self._endpoints)
            first = self._current
            for step in range(count):
                endpoint = self._endpoints[(first + step) % count]
                try:
                    answer = await self._request_endpoint(endpoint, path, body, write=write)
                except _EndpointDown as exc:
                    failures.append(str(exc))
                    leaderless = leaderless or exc.no_leader
                    continue
                except _EtcdAnswerError as exc:
                    _raise_answer_error(exc, write=write)
                self._current = endpoint.index
                return answer
            if not leaderless or asyncio.get_running_loop().time() >= deadline:
                raise _unavailable(failures)
            await asyncio.sleep(0.1)

    async def _request_endpoint(
        self, endpoint: _Endpoint, path: str, body: dict[str, Any], *, write: bool
    ) -> dict[str, Any]:
        for attempt in range(2):
            headers = dict(_HASLEADER)
            token = await self._token(endpoint)
            if token:
                headers["Authorization"] = token
            status, answer = await self._post(endpoint, path, body, headers, write=write)
            if status == 200:
                return answer
            code, message = _error_of(answer, status)
            if attempt == 0 and self._username is not None and _is_token_error(code, message):
                self._tokens.pop(endpoint.url, None)  # expired or unknown to this member: log in again
                continue
            _classify(endpoint, code, message, write=write)
        raise AssertionError("unreachable")

    async def _post(
        self, endpoint: _Endpoint, path: str, body: dict[str, Any], headers: dict[str, str], *, write: bool
    ) -> tuple[int, dict[str, Any]]:
        url = endpoint.url + path
        headers = {**headers, "Content-Type": "application/json"}
        try:
            async with self._session().post(
                url, data=json.dumps(body).encode(), headers=headers, timeout=self._unary_timeout, allow_redirects=False
            ) as response:
                status = response.status
                raw = await _read_bounded(response)
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            if self._closed:
                raise StoreError(f"etcd store {self.endpoints} was closed during the request") from exc
            raise _EndpointDown(endpoint.url, f"cannot connect: {_describe(exc)}") from exc
        except TimeoutError as exc:
            if write:
                raise OutcomeUnknownError(
                    f"etcd {endpoint.url} did not answer a write within {self._timeout:g}s;"
                    " it may or may not have been applied"
                ) from exc
            raise UnavailableError(f"etcd {endpoint.url} did not answer a read within {self._timeout:g}s") from exc
        except (aiohttp.ClientError, OSError, RuntimeError) as exc:  # the connection broke after the request went out
            # (OSError: with TLS 1.3 a refused client certificate surfaces as a raw
            # ssl.SSLError on the first read; RuntimeError: the session was closed.)
            if self._closed:
                raise StoreError(f"etcd store {self.endpoints} was closed during the request") from exc
            if _tls_refused(exc):
                raise _EndpointDown(endpoint.url, f"TLS refused: {_describe(exc)}") from exc
            reason = _describe(exc)
            if endpoint.url.startswith("https:") and _chain_has(exc, (BrokenPipeError, ConnectionResetError)):
                # With TLS 1.3 a member that rejects our client certificate just drops the connection.
                reason += " (the member may have refused this client's TLS certificate)"
            if write:
                raise OutcomeUnknownError(
                    f"etcd {endpoint.url} dropped the connection during a write ({reason});"
                    " it may or may not have been applied"
                ) from exc
            raise _EndpointDown(endpoint.url, f"connection lost: {reason}") from exc
        answer = _loads(raw)
        if answer is None:
            text = raw.decode("utf-8", "replace").strip()[:300]
            what = f"etcd {endpoint.url} answered {path} with HTTP {status} and no JSON: {text!r}"
            if 400 <= status < 500:
                # Refused in front of etcd's API (nothing was applied), e.g. a client
                # certificate with a Common Name while auth and client-cert-auth are on.
                hint = (
                    "; with auth enabled, etcd's gateway needs a client certificate without a Common Name"
                    if "CommonName" in text
                    else ""
                )
                raise StoreError(what + hint)
            if write:
                raise OutcomeUnknownError(what + "; the write may or may not have been applied")
            if status == 200:
                raise StoreError(what)
            raise _EndpointDown(endpoint.url, f"HTTP {status}: {text!r}")
        return status, answer

    async def _token(self, endpoint: _Endpoint) -> str | None:
        """This member's auth token, logging in first if there is none yet."""
        if self._username is None:
            return None
        token = self._tokens.get(endpoint.url)
        if token is not None:
            return token
        lock = self._token_locks.setdefault(endpoint.url, asyncio.Lock())
        async with lock:
            token = self._tokens.get(endpoint.url)
            if token is not None:
                return token
            body = {"name": self._username, "password": self._password}
            status, answer = await self._post(endpoint, "/v3/auth/authenticate", body, dict(_HASLEADER), write=False)
            if status != 200:
                code, message = _error_of(answer, status)
                if code == _FAILED_PRECONDITION and "authentication is not enabled" in message:
                    token = ""  # nothing to log in to; requests go without a token
                else:
                    _classify(endpoint, code, message, write=False, what="authentication")
            else:
                token = str(answer.get("token") or "")
            self._tokens[endpoint.url] = token
            return token

    async def _watch_stream(
        self, endpoint: _Endpoint, body: dict[str, Any], start: int
    ) -> AsyncGenerator[list[WatchEvent], None]:
        """The events of one watch stream on ``endpoint``, a response (whole revisions) at a time.

        Yields an empty list once the watch is created. Raises :class:`_EndpointDown`
        when the stream cannot be opened or breaks, :class:`CompactedError` when
        ``start`` is compacted.
        """
        headers = {**_HASLEADER, "Content-Type": "application/json"}
        payload = json.dumps(body).encode()
        opened: aiohttp.ClientResponse | None = None
        for attempt in range(2):
            token = await self._token(endpoint)
            if token:
                headers["Authorization"] = token
            try:
                async with self._session().post(
                    endpoint.url + "/v3/watch", data=payload, headers=headers, timeout=self._watch_timeout,
                    allow_redirects=False,
                ) as response:
                    opened = response
                    self._streams.add(response)
                    if response.status != 200:
                        code, message = _error_of(_loads(await _read_bounded(response)), response.status)
                        if attempt == 0 and self._username is not None and _is_token_error(code, message):
                            self._tokens.pop(endpoint.url, None)
                            continue
                        _classify(endpoint, code, message, write=False, what="watch")
                    async for line in _lines(response):
                        message_ = _loads(line)
                        if message_ is None:
                            raise _EndpointDown(endpoint.url, f"unreadable watch message {line[:200]!r}")
                        if "error" in message_:
                            error = message_["error"]
                            code, text = _error_of({"code": error.get("grpc_code"), **error}, 500)
                            if self._username is not None and _is_token_error(code, text):
                                self._tokens.pop(endpoint.url, None)
                                raise _EndpointDown(endpoint.url, f"watch stream ended: {text}")
                            _classify(endpoint, code, text, write=False, what="watch")
                        result = message_.get("result") or {}
                        compact_revision = _int(result.get("compact_revision"))
                        if compact_revision:
                            # etcd keeps events from compact_revision on; everything before is gone.
                            raise CompactedError(
                                self._store_revision(start) if start else 0,
                                self._store_revision(compact_revision - 1),
                            )
                        if result.get("canceled"):
                            reason = result.get("cancel_reason") or "no reason given"
                            raise StoreError(f"etcd {endpoint.url} cancelled the watch: {reason}")
                        if result.get("created"):
                            yield []
                            continue
                        events = [self._event(e) for e in result.get("events") or []]
                        if events:
                            yield events
                return
            except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
                self._check_open()
                raise _EndpointDown(endpoint.url, f"cannot connect: {_describe(exc)}") from exc
            except (aiohttp.ClientError, OSError, RuntimeError) as exc:
                self._check_open()
                raise _EndpointDown(endpoint.url, f"watch stream broke: {_describe(exc)}") from exc
            finally:
                if opened is not None:
                    self._streams.discard(opened)

    def _event(self, event: dict[str, Any]) -> WatchEvent:
        kv = event.get("kv") or {}
        deleted = event.get("type") == "DELETE"
        record = self._record(kv)
        if deleted:
            record = Record(record.key, b"", 0, 0, record.mod_revision)
        return WatchEvent(record.mod_revision, deleted, record)


class _Compacted(Exception):
    """A read at a pinned revision found it compacted."""


# -- helpers -----------------------------------------------------------------------


def _check_endpoint(url: str) -> str:
    url = str(url).strip().rstrip("/")
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("http", "https") or not rest or "/" in rest:
        raise ValueError(f"etcd endpoint must be http(s)://host:port, got {url!r}")
    return url


def _ssl_context(ca_file: str | None, cert_file: str | None, key_file: str | None) -> ssl.SSLContext:
    try:
        context = ssl.create_default_context(cafile=ca_file)
        if cert_file is not None:
            context.load_cert_chain(cert_file, key_file)
    except (OSError, ssl.SSLError) as exc:
        raise StoreError(f"cannot load the etcd TLS files: {exc}") from exc
    return context


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _int(value: Any) -> int:
    return int(value) if value else 0


def _loads(raw: bytes | str) -> dict[str, Any] | None:
    try:
        value = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None


async def _read_bounded(response: aiohttp.ClientResponse) -> bytes:
    """The whole body of an answer, refusing one larger than :data:`MAX_ANSWER_BYTES`."""
    if (response.content_length or 0) > MAX_ANSWER_BYTES:
        raise aiohttp.ClientPayloadError(f"answer of {response.content_length} bytes (at most {MAX_ANSWER_BYTES})")
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_any():
        size += len(chunk)
        if size > MAX_ANSWER_BYTES:
            raise aiohttp.ClientPayloadError(f"answer over {MAX_ANSWER_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _lines(response: aiohttp.ClientResponse) -> AsyncGenerator[bytes, None]:
    """The non-blank lines of a streamed answer (the gateway ends each watch message with a newline).

    Split here rather than with aiohttp's ``readline``, whose line limit (128 KiB) a watch
    message carrying large records would pass.
    """
    parts: list[bytes] = []  # of the line not complete yet
    size = 0
    async for chunk in response.content.iter_any():
        if b"\n" not in chunk:
            parts.append(chunk)
            size += len(chunk)
            if size > MAX_ANSWER_BYTES:
                raise aiohttp.ClientPayloadError(f"watch message over {MAX_ANSWER_BYTES} bytes")
            continue
        head, *complete, tail = chunk.split(b"\n")
        for line in (b"".join([*parts, head]), *complete):
            if line.strip():
                yield line
        parts, size = [tail], len(tail)
    last = b"".join(parts)
    if last.strip():
        yield last


def _bytes_prefix_end(prefix: bytes) -> bytes:
    """etcd's range_end for a prefix: the prefix with its last non-0xff byte incremented."""
    stem = prefix.rstrip(b"\xff")
    if not stem:
        return b"\0"  # every key from ``prefix`` on
    return stem[:-1] + bytes([stem[-1] + 1])


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and its causes (aiohttp wraps ssl and OS errors)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _chain_has(exc: BaseException, types: tuple[type[BaseException], ...]) -> bool:
    return any(isinstance(e, types) for e in _chain(exc))


def _tls_refused(exc: BaseException) -> bool:
    """Whether TLS failed (the peer's alert, or its certificate): no request got through then."""
    return any(
        isinstance(e, ssl.SSLCertVerificationError) or (isinstance(e, ssl.SSLError) and "ALERT" in str(e).upper())
        for e in _chain(exc)
    )


def _error_of(answer: dict[str, Any] | None, status: int) -> tuple[int, str]:
    """The gRPC code and message of a gateway error answer."""
    answer = answer or {}
    message = str(answer.get("message") or answer.get("error") or f"HTTP {status}")
    try:
        code = int(answer.get("code") or 0)
    except (TypeError, ValueError):
        code = 0
    return code, message


def _is_token_error(code: int, message: str) -> bool:
    return code == _UNAUTHENTICATED or any(m in message for m in _TOKEN_MESSAGES)


def _classify(endpoint: _Endpoint, code: int, message: str, *, write: bool, what: str = "request") -> NoReturn:
    """Raise for an etcd error answer: :class:`_EndpointDown` if another member may take it."""
    if any(m in message for m in _NO_LEADER_MESSAGES):
        raise _EndpointDown(endpoint.url, message, no_leader=True)
    if not write and (code == _UNAVAILABLE or any(m in message for m in _TIMEOUT_MESSAGES)):
        raise _EndpointDown(endpoint.url, message)  # a read is safe to try on another member
    raise _EtcdAnswerError(endpoint.url, code, message)


def _raise_answer_error(exc: _EtcdAnswerError, *, write: bool) -> NoReturn:
    where = f"etcd {exc.endpoint}"
    if _COMPACTED_MESSAGE in exc.message:
        raise _Compacted(exc.message) from None
    if write and (exc.code == _UNAVAILABLE or any(m in exc.message for m in _TIMEOUT_MESSAGES)):
        raise OutcomeUnknownError(f"{where}: {exc.message}; the write may or may not have been applied") from None
    if exc.code == _RESOURCE_EXHAUSTED:
        raise UnavailableError(f"{where} is overloaded, nothing was written: {exc.message}") from None
    if exc.code in (_PERMISSION_DENIED, _UNAUTHENTICATED) or "authentication failed" in exc.message:
        raise StoreError(f"{where} refused the credentials or permissions: {exc.message}") from None
    if exc.code == _INVALID_ARGUMENT:
        raise StoreError(f"{where} rejected the request: {exc.message}") from None
    raise StoreError(f"{where}: {exc.message} (gRPC code {exc.code})") from None


def _unavailable(failures: list[str]) -> UnavailableError:
    if failures and all("no leader" in f for f in failures):
        summary = "the etcd cluster has no leader (lost quorum: too few members are up)"
    else:
        summary = "no etcd endpoint took the request (cluster down, or lost quorum)"
    return UnavailableError(f"{summary}; nothing was written: " + "; ".join(failures))
