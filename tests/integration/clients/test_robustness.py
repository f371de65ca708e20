"""Robustness of the PKCS#11 path (module -> agent -> node) when processes die under it.

Applications are real python-pkcs11 programs (``APP`` below, run as subprocesses) loading the plain
build of the Strongroom module; the cluster is a real ``strongroom up`` directory.

(a) An application SIGKILLed in the middle of its calls leaves the agent healthy: the agent ends that
    application's state, ``strongroom status`` reports it running, another application works at once.
(b) The agent killed and started again (``strongroom up`` restarts what is missing) under a running,
    logged-in application (issue 14 item 3): its next calls simply work — the module reconnects and
    reopens the application (its sessions under the same handles, its login from the PIN it keeps in
    locked memory); nothing is initialized again. C_Finalize + C_Initialize + C_Login still work too.
(c) The node killed (its whole process group) and restarted by ``strongroom up`` under load
    (4 threads signing/verifying with a token key through the module) is invisible to the
    application: zero errors; calls made while it was down wait and then succeed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest

from strongroom.agent.config import AgentConfig, Timeouts
from strongroom.local.agent import agent_status, stop_agent
from strongroom.local.layout import Layout
from strongroom.local.processes import process_group_members

from ..conftest import LocalCluster, Pkcs11Module, Pkcs11Target, pkcs11_target

pytest.importorskip("pkcs11", reason="python-pkcs11 drives the module here (pip install python-pkcs11)")

KEY_LABEL = "robust-ec"
PASSWORD = "robust-password-1"
#: Bounds a wait that only a broken system exceeds (never a pass/fail criterion on a healthy one).
PATIENCE = 60.0

# An application: python-pkcs11 over the Strongroom module. argv: MODULE TOKEN_LABEL PIN KEY_LABEL MODE [ARG]
# It prints JSON lines; see each mode.
APP = r'''
import json, sys, threading, time
import pkcs11
from pkcs11 import Mechanism, ObjectClass
from pkcs11.exceptions import PKCS11Error

MODULE, TOKEN, PIN, LABEL, MODE = sys.argv[1:6]
ARG = sys.argv[6] if len(sys.argv) > 6 else None
MECH = Mechanism.ECDSA_SHA256
DATA = b"robustness " * 20


def say(**fields):
    print(json.dumps(fields), flush=True)


def open_app(lib):
    """(first session, logged in) and the token key pair, found by label."""
    token = lib.get_token(token_label=TOKEN)
    session = token.open(user_pin=PIN)
    priv = session.get_key(object_class=ObjectClass.PRIVATE_KEY, label=LABEL)
    pub = session.get_key(object_class=ObjectClass.PUBLIC_KEY, label=LABEL)
    return token, session, priv, pub


def sign_verify(priv, pub):
    signature = priv.sign(DATA, mechanism=MECH)
    if not pub.verify(DATA, signature, mechanism=MECH):
        raise AssertionError("the signature did not verify")


def error_name(exc):
    return type(exc).__name__


lib = pkcs11.lib(MODULE)
token, session, priv, pub = open_app(lib)

if MODE == "once":
    # Log in, sign and verify (single-part and multi-part), encrypt with a session AES key.
    sign_verify(priv, pub)
    multi = priv.sign(iter([DATA[:7], DATA[7:]]), mechanism=MECH)
    assert pub.verify(DATA, multi, mechanism=MECH)
    from pkcs11 import KeyType
    aes = session.generate_key(KeyType.AES, 256, store=False)
    iv = session.generate_random(128)
    assert aes.decrypt(aes.encrypt(DATA, mechanism_param=iv), mechanism_param=iv) == DATA
    say(ok=True)

elif MODE == "loop":
    # THREADS threads, each on its own session, sign forever (single-part and multi-part, so that
    # a kill finds operations of both kinds in flight); one line per 10 calls.
    threads = int(ARG)
    count = [0]
    lock = threading.Lock()

    def worker(index):
        own_priv, own_pub = priv, pub
        if index:
            own = token.open()  # the login is the application's: later sessions share it
            own_priv = own.get_key(object_class=ObjectClass.PRIVATE_KEY, label=LABEL)
            own_pub = own.get_key(object_class=ObjectClass.PUBLIC_KEY, label=LABEL)
        n = 0
        while True:
            if n % 2:
                own_priv.sign(iter([DATA[:5], DATA[5:50], DATA[50:]]), mechanism=MECH)
            else:
                sign_verify(own_priv, own_pub)
            n += 1
            with lock:
                count[0] += 1
                if count[0] % 10 == 0:
                    say(calls=count[0])

    for i in range(threads):
        threading.Thread(target=worker, args=(i,), daemon=True).start()
    threading.Event().wait()

elif MODE == "restart":
    # A step-driven application: READY after a first good call, then one step per stdin line.
    sign_verify(priv, pub)
    say(step="ready")
    sys.stdin.readline()                       # the agent has been restarted under us
    outcomes = []
    for _ in range(3):
        try:
            sign_verify(priv, pub)
            outcomes.append("OK")
        except PKCS11Error as exc:
            outcomes.append(error_name(exc))
    try:
        lib.get_slots()
        slots = "OK"
    except PKCS11Error as exc:
        slots = error_name(exc)
    lib.reinitialize()                         # C_Finalize + C_Initialize: a new application id
    token, session, priv, pub = open_app(lib)  # C_Login again
    for _ in range(3):
        sign_verify(priv, pub)
    say(step="done", outcomes=outcomes, slots=slots)

elif MODE == "load":
    # THREADS threads sign and verify in a loop and record (start, end, error) per call (monotonic
    # clock, shared with the test on Linux). READY once every thread has made one good call. On a
    # stdin line "T", each thread goes on until it has made MIN_AFTER calls that started after
    # monotonic time T (or PATIENCE seconds passed), then the calls are printed.
    threads = int(ARG)
    MIN_AFTER, PATIENCE = 10, 60.0
    records = [[] for _ in range(threads)]
    first = [threading.Event() for _ in range(threads)]
    after = [None]
    stop_by = [None]

    def worker(index):
        own_priv, own_pub = priv, pub
        if index:
            own = token.open()
            own_priv = own.get_key(object_class=ObjectClass.PRIVATE_KEY, label=LABEL)
            own_pub = own.get_key(object_class=ObjectClass.PUBLIC_KEY, label=LABEL)
        mine = records[index]
        while True:
            start = time.monotonic()
            error = None
            try:
                sign_verify(own_priv, own_pub)
            except PKCS11Error as exc:
                error = error_name(exc)
            except AssertionError as exc:
                error = str(exc)
            end = time.monotonic()
            mine.append((start, end, error))
            first[index].set()
            if after[0] is not None:
                done = sum(1 for s, _e, _r in mine if s > after[0]) >= MIN_AFTER
                if done or end > stop_by[0]:
                    return

    workers = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(threads)]
    for w in workers:
        w.start()
    for event in first:
        event.wait(PATIENCE)
    say(step="ready")
    line = sys.stdin.readline()
    stop_by[0] = time.monotonic() + PATIENCE
    after[0] = float(line)
    for w in workers:
        w.join(PATIENCE + 5)
    say(step="done", calls=[call for mine in records for call in mine], stuck=sum(w.is_alive() for w in workers))
'''


# --- helpers ----------------------------------------------------------------------------------------


class Apps:
    """Starts APP subprocesses against one cluster; kills whatever is left at the end."""

    def __init__(self, target: Pkcs11Target, script: Path, pin: str) -> None:
        self.target = target
        self.script = script
        self.pin = pin
        self.started: list[subprocess.Popen[str]] = []

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("STRONGROOM_")}
        env["STRONGROOM_AGENT_SOCKET"] = self.target.socket
        env["STRONGROOM_PKCS11_TIMEOUT"] = "90"  # above any wait below: the agent's answer comes first
        return env

    def argv(self, mode: str, arg: str | None = None) -> list[str]:
        argv = [sys.executable, str(self.script), str(self.target.module), self.target.token_label, self.pin,
                key_label(self.pin.split(":", 1)[0]), mode]
        return argv + ([arg] if arg is not None else [])

    def start(self, mode: str, arg: str | None = None) -> subprocess.Popen[str]:
        process = subprocess.Popen(self.argv(mode, arg), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True, env=self.env())
        self.started.append(process)
        return process

    def run_once(self) -> dict[str, Any]:
        result = subprocess.run(self.argv("once"), capture_output=True, text=True, env=self.env(), timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr
        return json.loads(result.stdout.splitlines()[-1])

    def cleanup(self) -> None:
        for process in self.started:
            if process.poll() is None:
                process.kill()
            try:
                process.communicate(timeout=30)
            except (subprocess.TimeoutExpired, ValueError):
                pass


def read_json_line(process: subprocess.Popen[str], timeout: float = PATIENCE) -> dict[str, Any]:
    """The next JSON line of an application (a thread reads, so that a hang cannot block the test)."""
    box: list[str] = []
    assert process.stdout is not None
    reader = threading.Thread(target=lambda: box.append(process.stdout.readline()), daemon=True)  # type: ignore[union-attr]
    reader.start()
    reader.join(timeout)
    if not box or not box[0]:
        process.kill()
        _out, err = process.communicate(timeout=30)
        raise AssertionError(f"the application printed nothing within {timeout:.0f} s "
                             f"(exit {process.returncode}); stderr:\n{err}")
    return json.loads(box[0])


def send(process: subprocess.Popen[str], line: str) -> None:
    stdin: IO[str] | None = process.stdin
    assert stdin is not None
    stdin.write(line + "\n")
    stdin.flush()


def key_label(user: str) -> str:
    """The label of a user's key pair: one per user, since every session sees every user's public keys."""
    return f"{KEY_LABEL}-{user}"


def setup_user(target: Pkcs11Target, name: str) -> str:
    """A crypto user owning a token EC P-256 key pair labelled key_label(name) (made with the CLI)."""
    pin = target.crypto_user(name, PASSWORD)
    code, reply = target.cluster.cli("key", "generate-asymmetric-pair", "ec", "--label", key_label(name),
                                     "--curve", "secp256r1", pin=pin)
    assert code == 0, reply
    return pin


def cluster_status(cluster: LocalCluster) -> dict[str, Any]:
    """`strongroom status --json`: an error envelope (with the data) and exit status 1 when something is not
    healthy, error_code 0 and exit status 0 otherwise."""
    code, reply = cluster.cli("status")
    healthy = reply["data"]["healthy"]
    assert (reply["error_code"] == 0) == healthy and code == (0 if healthy else 1), reply
    return reply["data"]


def wait_for(predicate: Any, what: str, timeout: float = PATIENCE) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f} s")
        time.sleep(0.05)


@pytest.fixture
def app_script(tmp_path: Path) -> Path:
    path = tmp_path / "p11app.py"
    path.write_text(APP)
    return path


# --- (a) an application killed mid-operation ----------------------------------------------------------


def test_application_killed_mid_operation_leaves_agent_healthy(shared_cluster: LocalCluster, pkcs11: Pkcs11Target,
                                                               app_script: Path) -> None:
    apps = Apps(pkcs11, app_script, setup_user(pkcs11, "robust_kill"))
    agent_log = shared_cluster.dir / "agent.log"
    agent_pid = agent_status(shared_cluster.dir)["pid"]
    try:
        for round_ in range(3):
            # 4 threads signing (single-part and multi-part) through the module: most of the time every
            # thread is inside a call, several with a multi-part operation open on the node.
            victim = apps.start("loop", "4")
            first = read_json_line(victim)["calls"]
            last = first
            while last < first + 30:  # it is working: let it be well into its calls
                last = read_json_line(victim)["calls"]
            victim.send_signal(signal.SIGKILL)
            victim.wait(timeout=30)
            assert victim.returncode == -signal.SIGKILL

            # The agent noticed the application's connections closing and ended its state.
            wait_for(lambda victim=victim: f"(pid {victim.pid}) finalized" in agent_log.read_text(errors="replace"),
                     f"the agent ending the state of killed application {victim.pid} (round {round_})")

            # Another application works right after, and the agent is the same, healthy process.
            assert apps.run_once() == {"ok": True}
            status = cluster_status(shared_cluster)
            assert status["agent"]["health"] == "running", status
            assert status["agent"]["pid"] == agent_pid, status
            assert status["healthy"] is True, status
    finally:
        apps.cleanup()
    assert "Traceback" not in agent_log.read_text(errors="replace")


# --- (b) the agent restarted under a running application ----------------------------------------------


def test_agent_restart_under_application(shared_cluster: LocalCluster, pkcs11: Pkcs11Target,
                                         app_script: Path) -> None:
    apps = Apps(pkcs11, app_script, setup_user(pkcs11, "robust_agent"))
    try:
        app = apps.start("restart")
        assert read_json_line(app) == {"step": "ready"}

        old_pid = int(Layout(shared_cluster.dir).agent_pid.read_text())
        os.kill(old_pid, signal.SIGKILL)  # a crash: no goodbye, the socket file stays behind
        wait_for(lambda: agent_status(shared_cluster.dir)["health"] == "stopped", "the agent dying")
        assert cluster_status(shared_cluster)["agent"]["health"] == "stopped"

        restarted = shared_cluster.run("up", "--json")  # restarts what is missing: here the agent
        assert restarted.returncode == 0, restarted.stdout + restarted.stderr
        status = cluster_status(shared_cluster)
        assert status["agent"]["health"] == "running" and status["agent"]["pid"] != old_pid, status

        send(app, "go")
        done = read_json_line(app)
        assert done["step"] == "done", done
        # The same session, key handles and login: every call works, none needed re-initializing.
        assert done["outcomes"] == ["OK", "OK", "OK"], done
        assert done["slots"] == "OK", done
        # ...and after C_Finalize + C_Initialize + C_Login it signed and verified again (or it would
        # not have printed "done"); it exits cleanly.
        app.wait(timeout=PATIENCE)
        assert app.returncode == 0, app.stderr.read() if app.stderr else ""

        # A new application is fine too.
        assert apps.run_once() == {"ok": True}
    finally:
        apps.cleanup()


# --- (c) the node restarted under load ----------------------------------------------------------------

#: The agent of this test waits this long for a node to come back (the default,
#: Timeouts.reconnect_wait, is 5 s; a node restarts in about one second here, but a loaded test
#: machine must not turn that margin into a failure).
RECONNECT_WAIT = 45.0


@pytest.fixture
def patient_agent(cluster: LocalCluster) -> Iterator[LocalCluster]:
    """The cluster with its agent replaced by one whose reconnect_wait is RECONNECT_WAIT.

    The agent `up` started is stopped and a real agent is started from a copy of its configuration
    that differs only in that timeout; DIR/agent.pid names it, so `up` (which only starts an agent
    that is not running) leaves it alone and `down` would stop it.
    """
    directory = cluster.dir
    config = AgentConfig.load(directory / "agent.toml")
    assert config.timeouts.reconnect_wait == Timeouts().reconnect_wait  # what `up` writes: the default
    config.timeouts.reconnect_wait = RECONNECT_WAIT
    patient = directory / "agent-patient.toml"
    config.write(patient)
    assert stop_agent(directory) is not None
    log = open(directory / "agent.log", "ab")
    agent = subprocess.Popen([sys.executable, "-m", "strongroom", "agent", "--config", str(patient)],
                             stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        Layout(directory).agent_pid.write_text(f"{agent.pid}\n")
        wait_for(lambda: agent.poll() is not None or agent_status(directory)["health"] == "running",
                 "the patient agent answering")
        assert agent_status(directory)["pid"] == agent.pid, (directory / "agent.log").read_text()
        yield cluster
    finally:
        stop_agent(directory)  # SIGTERM, SIGKILL if it hangs
        if agent.poll() is None:
            agent.kill()
        agent.wait(timeout=30)
        log.close()


def test_node_restart_under_load_is_invisible(patient_agent: LocalCluster, pkcs11_module: Pkcs11Module,
                                              app_script: Path) -> None:
    cluster = patient_agent
    target = pkcs11_target(cluster, pkcs11_module)
    apps = Apps(target, app_script, setup_user(target, "robust_node"))
    try:
        app = apps.start("load", "4")
        assert read_json_line(app) == {"step": "ready"}
        time.sleep(0.5)  # calls before the restart

        old_pids = cluster.node_pids()
        pgid = os.getpgid(int((cluster.node_dir / "node.pid").read_text()))
        killed_at = time.monotonic()
        os.killpg(pgid, signal.SIGKILL)  # the node and all its workers, mid-request
        wait_for(lambda: not process_group_members(pgid), "the node's processes dying")
        assert cluster_status(cluster)["nodes"][0]["health"] == "stopped"
        restarted = cluster.run("up", "--json")  # restarts the node; the agent keeps running
        back_at = time.monotonic()
        assert restarted.returncode == 0, restarted.stdout + restarted.stderr
        outage = back_at - killed_at
        assert outage < RECONNECT_WAIT, f"the node took {outage:.1f} s to come back"
        assert not cluster.node_pids() & old_pids

        send(app, repr(back_at))
        done = read_json_line(app, timeout=2 * PATIENCE + 10)
        assert done["step"] == "done" and done["stuck"] == 0, done
        calls = done["calls"]
        errors = [(start, end, error) for start, end, error in calls if error is not None]
        before = [c for c in calls if c[1] < killed_at]
        during = [c for c in calls if c[0] < back_at and c[1] > killed_at]
        after = [c for c in calls if c[0] > back_at]
        summary = (f"{len(calls)} calls: {len(before)} before, {len(during)} during the {outage:.2f} s outage "
                   f"(longest {max((e - s for s, e, _ in during), default=0):.2f} s), {len(after)} after; "
                   f"errors: {errors[:10]}")
        assert not errors, summary
        assert len(before) >= 4 and len(during) >= 1 and len(after) >= 4 * 10, summary
        app.wait(timeout=PATIENCE)
        assert app.returncode == 0

        status = cluster_status(cluster)
        assert status["healthy"] is True, status
    finally:
        apps.cleanup()
