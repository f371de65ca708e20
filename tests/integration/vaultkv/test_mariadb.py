"""MariaDB (Debian's mariadb-server + mariadb-plugin-hashicorp-key-management) encrypting its tables with keys
released by the cluster's Vault KV endpoint: one throw-away datadir and one server for the module.

The server runs with `innodb_encrypt_tables=ON` and `innodb_encrypt_log=ON`; the table under test is
`ENCRYPTED=YES ENCRYPTION_KEY_ID=1`, a control table `ENCRYPTED=NO` holds the same marker (so the search for
plaintext is shown to find it where it is). The plugin's cache of the latest version is timed with clock() —
the server's CPU time — so an idle server would not look for a new version for a long while; the tests set
`hashicorp_key_management_cache_version_timeout=0` to see a rotation at once (docs/tde.md says so).
"""

from __future__ import annotations

import getpass
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.integration.vaultkv.conftest import VaultEnv

MARIADBD = shutil.which("mariadbd") or "/usr/sbin/mariadbd"
PLUGIN = "hashicorp_key_management.so"
MARKER = b"STRONGROOM-PLAINTEXT-MARKER-7f3a"
MOUNT = "mariadb"

pytestmark = [
    pytest.mark.skipif(not Path(MARIADBD).exists() or shutil.which("mariadb-install-db") is None,
                       reason="needs MariaDB (apt-get install mariadb-server)"),
    pytest.mark.skipif(not any(Path(d, PLUGIN).exists() for d in ("/usr/lib/mysql/plugin",
                                                                  "/usr/lib/x86_64-linux-gnu/mariadb19/plugin")),
                       reason="needs the Vault plugin (apt-get install mariadb-plugin-hashicorp-key-management)"),
]


class Refused(Exception):
    """mariadbd exited during start-up; the message is its error log."""


@dataclass
class MariaDB:
    root: Path
    url: str
    ca: str
    token: str
    user: str = field(default_factory=getpass.getuser)
    process: subprocess.Popen[bytes] | None = None

    @property
    def datadir(self) -> Path:
        return self.root / "data"

    @property
    def socket(self) -> Path:
        return self.root / "mysqld.sock"

    @property
    def error_log(self) -> Path:
        return self.root / "error.log"

    def install(self) -> None:
        result = subprocess.run(["mariadb-install-db", "--no-defaults", f"--datadir={self.datadir}",
                                 f"--user={self.user}", "--auth-root-authentication-method=socket", "--skip-test-db"],
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr

    def start(self, token: str | None = None, timeout: float = 60) -> None:
        """Start mariadbd; Refused (with its error log) if it exits before it accepts connections."""
        assert self.process is None
        self.error_log.write_text("")
        argv = [MARIADBD, "--no-defaults", f"--user={self.user}", f"--datadir={self.datadir}",
                f"--socket={self.socket}", f"--pid-file={self.root / 'mysqld.pid'}", "--skip-networking",
                f"--log-error={self.error_log}", f"--plugin-load-add={PLUGIN}",
                f"--hashicorp-key-management-vault-url={self.url}/v1/{MOUNT}",
                f"--hashicorp-key-management-vault-ca={self.ca}",
                "--hashicorp-key-management-timeout=10",
                "--innodb-encrypt-tables=ON", "--innodb-encrypt-log=ON", "--innodb-encryption-threads=1",
                "--innodb-encryption-rotate-key-age=1", "--innodb-buffer-pool-size=32M"]
        # The token through the environment (VAULT_TOKEN): it stays off the command line others can read.
        env = dict(os.environ, VAULT_TOKEN=token or self.token)
        self.process = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                self.process = None
                raise Refused(self.error_log.read_text())
            if self.socket.exists() and self.sql("SELECT 1", check=False).returncode == 0:
                return
            assert time.monotonic() < deadline, f"mariadbd did not start:\n{self.error_log.read_text()}"
            time.sleep(0.2)

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        self.process = None

    def restart(self, token: str | None = None) -> None:
        self.stop()
        self.start(token)

    def sql(self, statement: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(["mariadb", f"--socket={self.socket}", "-u", self.user, "--batch",
                                 "--skip-column-names", "-e", statement], capture_output=True, text=True, timeout=60)
        if check:
            assert result.returncode == 0, result.stderr
        return result

    def rows(self, statement: str) -> list[list[str]]:
        return [line.split("\t") for line in self.sql(statement).stdout.splitlines()]

    def key_versions(self, table: str) -> tuple[int, int]:
        """(MIN_KEY_VERSION, CURRENT_KEY_VERSION) of a tablespace."""
        ((low, current),) = self.rows("SELECT MIN_KEY_VERSION, CURRENT_KEY_VERSION FROM "
                                      f"information_schema.INNODB_TABLESPACES_ENCRYPTION WHERE NAME = '{table}'")
        return int(low), int(current)


@dataclass
class Setup:
    vault: VaultEnv
    db: MariaDB
    writer: str
    reader: dict[str, str]


@pytest.fixture(scope="module")
def mariadb(vault: VaultEnv, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    writer = vault.token_create(MOUNT, "write", display_name="key rotation")
    # The database's own token: read only, its mount, the key ids it uses.
    reader = vault.token_create(MOUNT, "read", "1", "2", display_name="mariadb test")
    for key_id in ("1", "2"):
        assert vault.put(MOUNT, key_id, writer["token"]).status_code == 200
    db = MariaDB(tmp_path_factory.mktemp("mariadb"), vault.url, vault.ca, reader["token"])
    db.install()
    db.start()
    try:
        db.sql("CREATE DATABASE shop")
        db.sql("CREATE TABLE shop.secret (id INT PRIMARY KEY, v VARCHAR(100)) ENCRYPTED=YES ENCRYPTION_KEY_ID=1")
        db.sql("CREATE TABLE shop.control (id INT PRIMARY KEY, v VARCHAR(100)) ENCRYPTED=NO")
        for table in ("secret", "control"):
            db.sql(f"INSERT INTO shop.{table} VALUES " + ",".join(f"({i}, '{MARKER.decode()}-{i}')" for i in range(50)))
        yield Setup(vault, db, writer["token"], reader)
    finally:
        db.stop()


def _running(setup: Setup) -> MariaDB:
    if setup.db.process is None:
        setup.db.start()
    return setup.db


def test_rows_survive_a_restart_and_no_plaintext_reaches_the_disk(mariadb: Setup) -> None:
    db = _running(mariadb)
    db.stop()  # a clean shutdown writes every page and the log
    secret = (db.datadir / "shop" / "secret.ibd").read_bytes()
    control = (db.datadir / "shop" / "control.ibd").read_bytes()
    assert MARKER in control  # the search finds plaintext where there is some ...
    assert MARKER not in secret  # ... and none in the encrypted tablespace
    for log in db.datadir.glob("ib_logfile*"):
        assert MARKER not in log.read_bytes(), log  # nor in the (encrypted) redo log
    db.start()
    rows = db.rows("SELECT id, v FROM shop.secret ORDER BY id")
    assert rows == [[str(i), f"{MARKER.decode()}-{i}"] for i in range(50)]
    assert db.key_versions("shop/secret")[1] == 1


def test_each_key_release_is_audited(mariadb: Setup) -> None:
    db = _running(mariadb)
    db.sql("SELECT COUNT(*) FROM shop.secret")
    released = mariadb.vault.audit_events("vaultkv.key.release", accessor=mariadb.reader["accessor"], name="1")
    assert released and all(r["outcome"] == "ok" and r["details"]["mount"] == MOUNT for r in released)
    assert released[0]["details"]["token_name"] == "mariadb test" and released[0]["details"]["version"] == 1


@pytest.mark.timeout(300)
def test_a_new_key_version_is_picked_up(mariadb: Setup) -> None:
    db = _running(mariadb)
    assert mariadb.vault.put(MOUNT, "1", mariadb.writer).json()["data"]["version"] == 2
    db.sql("SET GLOBAL hashicorp_key_management_cache_version_timeout = 0")
    # InnoDB asks for the latest version every few seconds at idle: generous, for a busy machine.
    deadline = time.monotonic() + 180
    while db.key_versions("shop/secret")[1] != 2:
        assert time.monotonic() < deadline, "MariaDB did not pick up key version 2"
        time.sleep(0.5)
    db.sql("INSERT INTO shop.secret VALUES (100, 'after rotation') ON DUPLICATE KEY UPDATE v = VALUES(v)")
    db.restart()  # pages under version 1 and under version 2: both are fetched again and read back
    assert db.rows("SELECT COUNT(*) FROM shop.secret WHERE id < 50") == [["50"]]
    assert db.rows("SELECT v FROM shop.secret WHERE id = 100") == [["after rotation"]]
    versions = {r["details"]["version"] for r in mariadb.vault.audit_events(
        "vaultkv.key.release", accessor=mariadb.reader["accessor"], name="1")}
    assert {1, 2} <= versions


def test_mariadb_refuses_to_start_when_the_endpoint_is_down(mariadb: Setup) -> None:
    db = _running(mariadb)
    db.stop()
    code, _ = mariadb.vault.cluster.cli("vault-kv", "stop")
    assert code == 0
    try:
        with pytest.raises(Refused) as refused:
            db.start()
        assert "Unable to get storage options" in str(refused.value)
        assert "cannot enable encryption" in str(refused.value) or "decrypt failed" in str(refused.value)
    finally:
        code, _ = mariadb.vault.cluster.cli("vault-kv", "start", pin=mariadb.vault.cluster.admin_pin)
        assert code == 0
    db.start()
    assert db.rows("SELECT COUNT(*) FROM shop.secret WHERE id < 50") == [["50"]]


def test_mariadb_refuses_to_start_with_a_revoked_token(mariadb: Setup) -> None:
    db = _running(mariadb)
    own = mariadb.vault.token_create(MOUNT, "read", "1", "2", display_name="to be revoked")
    db.restart(own["token"])  # it works while the token is valid
    db.sql("INSERT INTO shop.secret VALUES (200, 'before revocation') ON DUPLICATE KEY UPDATE v = VALUES(v)")
    db.stop()
    mariadb.vault.revoke(own["accessor"])
    with pytest.raises(Refused) as refused:
        db.start(own["token"])
    assert "Unable to get storage options" in str(refused.value) and "403" in str(refused.value)
    refusal = mariadb.vault.audit_events("vaultkv.mount.read", accessor=own["accessor"])
    assert refusal and refusal[-1]["outcome"] == "CKR_ACTION_PROHIBITED"
    db.start()  # its own token again
    assert db.rows("SELECT v FROM shop.secret WHERE id = 200") == [["before revocation"]]
