#!/usr/bin/env python3
"""One process of bench/kms.py's async load generator (see bench/README.md, "KMS gateway").

An asyncio loop (uvloop when installed, as the gateway) with aiohttp and ``concurrency`` requests in
flight against ``endpoint``. Each request is signed anew with botocore's ``SigV4Auth``, the signer
boto3 uses: a fresh X-Amz-Date and signature over the body, which is serialized once per run (the
JSON of one operation's parameters does not change between calls). The answer is read whole; any
status other than 200 counts as a failure (and the first one is reported).

Protocol with the parent (bench/kms.py): the spec is JSON in argv[1]; the process warms up (3
requests per connection), prints ``ready``, waits for one line on stdin, runs ``seconds``, prints
one JSON line {ops, failures, first_failure, wall, latencies_ms} and exits when stdin closes.
"""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
import sys
import time
from typing import Any

import aiohttp
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

CONTENT_TYPE = "application/x-amz-json-1.1"


def body_of(spec: dict[str, Any]) -> bytes:
    op = spec["op"]
    if op == "Encrypt":
        params: dict[str, Any] = {"KeyId": spec["key_id"], "Plaintext": spec["plaintext_b64"]}
    elif op == "Decrypt":
        params = {"CiphertextBlob": spec["blob_b64"]}
    elif op == "GenerateDataKey":
        params = {"KeyId": spec["key_id"], "KeySpec": "AES_256"}
    else:
        raise SystemExit(f"unknown operation {op}")
    return json.dumps(params).encode()


class Generator:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.url = spec["endpoint"].rstrip("/") + "/"
        self.body = body_of(spec)
        self.target = "TrentService." + spec["op"]
        self.signer = SigV4Auth(Credentials(spec["access_key_id"], spec["secret_access_key"]), "kms",
                                spec["region"])
        self.failures = 0
        self.first_failure = ""

    def signed_headers(self) -> dict[str, str]:
        request = AWSRequest(method="POST", url=self.url, data=self.body,
                             headers={"Content-Type": CONTENT_TYPE, "X-Amz-Target": self.target})
        self.signer.add_auth(request)
        return dict(request.headers.items())

    async def one(self, session: aiohttp.ClientSession) -> None:
        async with session.post(self.url, data=self.body, headers=self.signed_headers()) as response:
            answer = await response.read()
            if response.status != 200:
                self.failures += 1
                if not self.first_failure:
                    self.first_failure = f"HTTP {response.status}: {answer[:300]!r}"

    async def run(self) -> dict[str, Any]:
        spec = self.spec
        tls: ssl.SSLContext | bool = False
        if self.url.startswith("https:"):
            tls = ssl.create_default_context(cafile=spec.get("ca_bundle") or None)
        concurrency = int(spec["concurrency"])
        connector = aiohttp.TCPConnector(limit=concurrency, ssl=tls)
        async with aiohttp.ClientSession(connector=connector, skip_auto_headers=("User-Agent",)) as session:
            for _ in range(3):  # warm up: every connection opened and used
                await asyncio.gather(*(self.one(session) for _ in range(concurrency)))
            if self.failures:
                raise SystemExit(f"warm-up failed: {self.first_failure}")
            print("ready", flush=True)
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
            latencies: list[float] = []
            stop_at = time.perf_counter() + float(spec["seconds"])

            async def loop() -> None:
                while True:
                    t0 = time.perf_counter()
                    await self.one(session)
                    t1 = time.perf_counter()
                    latencies.append(1000 * (t1 - t0))
                    if t1 >= stop_at:
                        return

            start = time.perf_counter()
            await asyncio.gather(*(loop() for _ in range(concurrency)))
            wall = time.perf_counter() - start
        return {"ops": len(latencies), "failures": self.failures, "first_failure": self.first_failure,
                "wall": wall, "latencies_ms": [round(x, 3) for x in latencies]}


def main() -> int:
    spec = json.loads(sys.argv[1])
    if "plaintext" in spec:
        spec["plaintext_b64"] = base64.b64encode(bytes.fromhex(spec.pop("plaintext"))).decode()
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        runner = asyncio.Runner()
    with runner:
        result = runner.run(Generator(spec).run())
    print(json.dumps(result), flush=True)
    sys.stdin.readline()  # exit when the parent has read this process's CPU time (it closes stdin)
    return 0


if __name__ == "__main__":
    sys.exit(main())
