"""docs/configuration.md names every setting of node.toml, agent.toml and kms.toml, and no other.

The settings come from the code: each file written with every optional part present (its own
``to_toml``), the option names each seal provider reads, and the dataclasses of kms.toml. A setting
added without its line in the reference (or a line left for one removed) fails here.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import fields
from pathlib import Path

from strongroom.agent.config import AgentConfig
from strongroom.client.profile import NodeAddress
from strongroom.kms.config import ClusterSettings, DeletionSettings, ServerSettings
from strongroom.metrics.settings import MetricsSettings
from strongroom.seal import SealSettings
from strongroom.services.config import BackupPolicy, NodeConfig

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = ROOT / "docs" / "configuration.md"
SEALS = ROOT / "src" / "strongroom" / "seal"


def documented() -> dict[str, dict[str, set[str]]]:
    """file -> section ("" for the top level, "[store]", "[[nodes]]" ...) -> the names in its tables' first column."""
    result: dict[str, dict[str, set[str]]] = {}
    file = section = None
    for line in REFERENCE.read_text().splitlines():
        if line.startswith("## "):
            file = line[3:].split(":")[0].strip()
            section = None
        elif line.startswith("### ") and file is not None:
            heading = re.match(r"### (?:`(\[\[?[a-z_]+\]?\])`|Top level)", line)
            assert heading, f"unexpected heading in {REFERENCE.name}: {line}"
            section = heading.group(1) or ""
            result.setdefault(file, {}).setdefault(section, set())
        elif line.startswith("| `") and file is not None and section is not None:
            result[file][section].add(line.split("`")[1])
    return result


def sections(document: dict[str, object]) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for key, value in document.items():
        if isinstance(value, dict):
            found[f"[{key}]"] = set(value)
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            found[f"[[{key}]]"] = {k for v in value for k in v}
        else:
            found.setdefault("", set()).add(key)
    return found


def seal_options() -> set[str]:
    """Every option a seal provider reads: ``options.get("x")``, ``options["x"]``, ``_option("x")``."""
    names = {"type"}
    for module in SEALS.glob("*.py"):
        text = module.read_text()
        names |= set(re.findall(r"options(?:\.get\(|\[)['\"]([a-z_]+)['\"]", text))
        names |= set(re.findall(r"_option\(['\"]([a-z_]+)['\"]", text))
    return names


def node_config(tmp_path: Path, **store: object) -> NodeConfig:
    """A node's configuration with every optional part present."""
    return NodeConfig(node_id="n1", node_dir=tmp_path, host="10.0.0.1", port=7443, tls_cert=tmp_path / "c",
                      tls_key=tmp_path / "k", ca_cert=tmp_path / "ca", store_path=tmp_path / "db",
                      peers=["10.0.0.2:7443"], backup=BackupPolicy(dir=tmp_path / "b"),
                      metrics=MetricsSettings("127.0.0.1:9464"), fail_selftests=["x"], seal=SealSettings("shares"),
                      **store)


def node_settings(tmp_path: Path) -> dict[str, set[str]]:
    sqlite = tomllib.loads(node_config(tmp_path).to_toml())
    etcd = tomllib.loads(node_config(tmp_path, store_backend="etcd", store_endpoints=["https://e:2379"],
                                     store_tls={"ca": "a", "cert": "b", "key": "c"}, store_username="u",
                                     store_password_file=tmp_path / "p").to_toml())
    found = sections(sqlite)
    found["[store]"] |= sections(etcd)["[store]"]
    found["[seal]"] = seal_options()
    assert set(found["[backup]"]) == {f.name for f in fields(BackupPolicy)}
    return found


def agent_settings(tmp_path: Path) -> dict[str, set[str]]:
    config = AgentConfig(socket=tmp_path / "s", ca=tmp_path / "ca", cert=tmp_path / "c", key=tmp_path / "k",
                         nodes=(NodeAddress("n1", "10.0.0.1", 7443, "a"),), socket_group="g",
                         metrics=MetricsSettings("127.0.0.1:9465"))
    return sections(tomllib.loads(config.to_toml()))


def kms_settings() -> dict[str, set[str]]:
    return {"[kms]": {f.name for f in fields(ServerSettings)}, "[cluster]": {f.name for f in fields(ClusterSettings)},
            "[deletion]": {f.name for f in fields(DeletionSettings)}, "[metrics]": {"listen"}}


def test_every_node_setting_is_documented_and_nothing_else(tmp_path: Path) -> None:
    assert documented()["node.toml"] == node_settings(tmp_path)


def test_every_agent_setting_is_documented_and_nothing_else(tmp_path: Path) -> None:
    assert documented()["agent.toml"] == agent_settings(tmp_path)


def test_every_kms_gateway_setting_is_documented_and_nothing_else() -> None:
    assert documented()["kms.toml"] == kms_settings()


def test_the_reference_parses_as_this_test_reads_it() -> None:
    """A heading or table the parser misread would make the comparisons above vacuous."""
    reference = documented()
    assert set(reference) == {"node.toml", "agent.toml", "kms.toml"}
    assert len(reference["node.toml"]["[limits]"]) >= 10 and "tcti" in reference["node.toml"]["[seal]"]
