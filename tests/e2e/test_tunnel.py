"""The private MCP tunnel, for real: a gateway in `--ingress tunnel` mode on loopback, a real reverse tunnel
(OpenSSH from the Debian packages: a private sshd on a loopback port with throw-away keys, `ssh -N -R`), a
real MCP client (the SDK's) calling through it, the call in the evidence, `aegress tunnel check` passing,
and each way the check fails giving its own reason: tunnel down, target down, wrong target, host refused,
authentication, evidence missing.

The tunnel's public side listens on 127.0.0.2 (loopback, but not a name the gateway accepts by default),
so a call that passes the Host check proves the gateway accepts its public name. Every process here is
started by the test and stopped by its pid; sshd runs with its own config, never the system's.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.procs import (
    ROOT,
    Gateway,
    Proc,
    add_stdio_fixture,
    aegress,
    aegress_json,
    allow_all,
    cli_env,
    mcp_client,
    run,
    run_gateway,
    run_http_upstream,
    setup_tenant,
)

SSHD = "/usr/sbin/sshd"
PUBLIC_HOST = "127.0.0.2"
FORBIDDEN = ("mcp", "starlette", "uvicorn", "httpx2")


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _accepts(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
        return True
    return False


def _wait(predicate: Any, what: str, timeout: float = 15.0, proc: Proc | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc is not None and proc.popen.poll() is not None:
            break
        time.sleep(0.05)
    output = "".join(proc.output)[-3000:] if proc is not None else ""
    raise AssertionError(f"{what} did not happen within {timeout} s\n{output}")


@dataclass
class Sshd:
    port: int
    user: str
    key: Path
    known_hosts: Path
    proc: Proc


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    """A private sshd on a loopback port: throw-away host and user keys, key login for this user only,
    remote forwards only, its public side bindable on 127.0.0.2 (GatewayPorts clientspecified)."""
    for tool in (SSHD, "/usr/bin/ssh", "/usr/bin/ssh-keygen"):
        if not Path(tool).exists():
            pytest.fail(f"{tool} is missing: run scripts/install-test-deps.sh (it installs OpenSSH)")
    work = tmp_path_factory.mktemp("sshd")
    os.chmod(work, 0o700)
    for name in ("host_key", "user_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"aegress-test-{name}", "-f",
                        str(work / name)], check=True, timeout=30)
    authorized = work / "authorized_keys"
    authorized.write_text((work / "user_key.pub").read_text())
    authorized.chmod(0o600)
    user = getpass.getuser()
    config = work / "sshd_config"
    config.write_text(f"""\
ListenAddress 127.0.0.1
HostKey {work / 'host_key'}
PidFile none
AuthorizedKeysFile {authorized}
# the throw-away files live under the test's tmp dir, whose parents (/tmp) StrictModes would refuse
StrictModes no
UsePAM no
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
AllowUsers {user}
AllowTcpForwarding remote
AllowAgentForwarding no
X11Forwarding no
PermitTTY no
GatewayPorts clientspecified
ClientAliveInterval 5
LogLevel VERBOSE
""")
    if os.geteuid() == 0 and not Path("/run/sshd").exists():
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege separation dir (tmpfs)
    port = _free_port("127.0.0.1")
    proc = Proc([SSHD, "-D", "-e", "-f", str(config), "-p", str(port)], dict(os.environ))
    try:
        _wait(lambda: _accepts("127.0.0.1", port), "sshd listening", proc=proc)
        known_hosts = work / "known_hosts"
        host_key = (work / "host_key.pub").read_text().split()
        known_hosts.write_text(f"[127.0.0.1]:{port} {host_key[0]} {host_key[1]}\n")
        yield Sshd(port, user, work / "user_key", known_hosts, proc)
    finally:
        proc.stop()


@contextlib.contextmanager
def reverse_tunnel(sshd: Sshd, public_port: int, target_port: int) -> Iterator[Proc]:
    """`ssh -N -R 127.0.0.2:PUBLIC:127.0.0.1:TARGET`: the public port on the sshd side reaches TARGET."""
    argv = ["ssh", "-F", "/dev/null", "-N", "-R", f"{PUBLIC_HOST}:{public_port}:127.0.0.1:{target_port}",
            "-p", str(sshd.port), "-i", str(sshd.key), "-o", "IdentitiesOnly=yes",
            "-o", f"UserKnownHostsFile={sshd.known_hosts}", "-o", "StrictHostKeyChecking=yes",
            "-o", "BatchMode=yes", "-o", "ExitOnForwardFailure=yes", "-o", "ServerAliveInterval=5",
            f"{sshd.user}@127.0.0.1"]
    proc = Proc(argv, dict(os.environ))
    try:
        _wait(lambda: _accepts(PUBLIC_HOST, public_port), "the reverse tunnel's public port", proc=proc)
        yield proc
    finally:
        proc.stop()
        _wait(lambda: not _accepts(PUBLIC_HOST, public_port), "the public port closing")


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/", 1)[0])


def _check(home: Path, url: str, *args: str, **env: str) -> tuple[int, dict[str, Any]]:
    proc = aegress(home, "tunnel", "check", "--url", url, "--timeout", "5", "--evidence-wait", "10", *args, "--json",
                   check=False, timeout=120, **env)
    assert proc.stdout.strip(), proc.stderr
    return proc.returncode, json.loads(proc.stdout)


@dataclass
class Tunnelled:
    gw: Gateway
    public_port: int
    public_url: str
    alice: str
    bob: str


@pytest.fixture(scope="module")
def tunnelled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tunnelled]:
    """A gateway in tunnel mode (tenant acme, actors alice and bob, the stdio fixture upstream) whose public
    URL is http://127.0.0.2:PORT/mcp; tests open and close the tunnel to it themselves."""
    home = tmp_path_factory.mktemp("tunnel") / "home"
    alice = setup_tenant(home, "acme", "alice")
    bob = setup_tenant(home, "acme", "bob")
    allow_all(home, "acme")
    add_stdio_fixture(home, "acme", "tools")
    public_port = _free_port(PUBLIC_HOST)
    public_url = f"http://{PUBLIC_HOST}:{public_port}/mcp"
    with run_gateway(home, "--ingress", "tunnel", "--public-url", public_url) as gw:
        yield Tunnelled(gw, public_port, public_url, alice, bob)


# -- the path working ----------------------------------------------------------------------------------
def test_a_real_client_calls_through_the_tunnel_and_the_call_is_in_the_evidence(
        sshd: Sshd, tunnelled: Tunnelled) -> None:
    gw = tunnelled.gw
    assert gw.url.startswith("http://127.0.0.1:")  # bound on loopback, not on the public name
    assert gw.proc.wait_for("Public URL").strip() == f"Public URL (tunnel ingress): {tunnelled.public_url}"
    with reverse_tunnel(sshd, tunnelled.public_port, _port(gw.url)):
        async def go() -> dict[str, Any]:
            async with mcp_client(tunnelled.public_url, tunnelled.alice) as client:
                names = [t.name for t in (await client.list_tools()).tools]
                assert "tools__echo" in names
                result = await client.call_tool("tools__echo", {"text": "through the tunnel"})
                assert result.content[0].text == "through the tunnel"
                return dict(result.meta["aegress"])

        receipt = run(go())
    rows = aegress_json(gw.home, "audit", "query", "--tenant", "acme", "--tool", "tools__echo")
    named = next(r for r in rows if r["seq"] == receipt["seq"] and r["origin"] == receipt["origin"])
    assert named["leaf_hash"] == receipt["leaf_hash"]  # the receipt names a sealed record of this call
    intent = next(r for r in rows if r["kind"] == "intent")
    outcome = next(r for r in rows if r["kind"] == "outcome")
    assert named in (intent, outcome) and outcome["intent_seq"] == intent["seq"]
    assert (intent["actor"], intent["verdict"], outcome["outcome"]) == ("alice", "allow", "completed")
    assert intent["record"]["body"]["client_name"] == "mcp"


def test_tunnel_check_passes_then_fails_when_the_tunnel_stops(sshd: Sshd, tunnelled: Tunnelled) -> None:
    gw = tunnelled.gw
    with reverse_tunnel(sshd, tunnelled.public_port, _port(gw.url)):
        code, report = _check(gw.home, tunnelled.public_url, "--tenant", "acme", "--actor", "alice")
        assert (code, report["ok"], report["reason"]) == (0, True, None), report
        assert [s["name"] for s in report["steps"]] == ["health", "initialize", "tools/list", "probe", "evidence"]
        hit = report["evidence"]
        assert (hit["tenant"], hit["actor"], hit["verdict"]) == ("acme", "alice", "hidden")
        record = aegress_json(gw.home, "audit", "show", f"acme:{hit['seq']}")
        assert record["tool"] == report["probe"] and record["kind"] == "decision"
        human = aegress(gw.home, "tunnel", "check", "--url", tunnelled.public_url, "-t", "acme", "-a", "alice",
                        timeout=120)
        assert "Tunnel check passed." in human.stdout
    code, report = _check(gw.home, tunnelled.public_url, "--tenant", "acme", "--actor", "alice")
    assert (code, report["reason"]) == (3, "tunnel-down"), report
    assert "refused" in report["message"] and report["steps"][-1]["name"] == "health"
    human = aegress(gw.home, "tunnel", "check", "--url", tunnelled.public_url, "-t", "acme", "-a", "alice",
                    check=False, timeout=120)
    assert human.returncode == 3 and "Error: tunnel-down:" in human.stderr and "Hint:" in human.stderr
    assert _accepts("127.0.0.1", _port(gw.url))  # the gateway itself is fine: only the tunnel is down


# -- each way it goes wrong ---------------------------------------------------------------------------
def test_a_tunnel_to_nothing_is_target_down(sshd: Sshd, tmp_path: Path) -> None:
    public_port = _free_port(PUBLIC_HOST)
    with reverse_tunnel(sshd, public_port, _free_port("127.0.0.1")):
        code, report = _check(tmp_path / "home", f"http://{PUBLIC_HOST}:{public_port}/mcp",
                              AEGRESS_MCP_GATEWAY_TOKEN="aeg_" + "x" * 40)
    assert (code, report["reason"]) == (3, "target-down"), report
    assert "closed without an HTTP answer" in report["message"]


def test_a_tunnel_to_the_server_behind_the_gateway_is_the_wrong_target(sshd: Sshd, tmp_path: Path) -> None:
    """The mistake the provider profiles warn about: the tunnel points at the MCP server, not at Aegress."""
    public_port = _free_port(PUBLIC_HOST)
    with run_http_upstream("plain") as (url, _), reverse_tunnel(sshd, public_port, _port(url)):
        code, report = _check(tmp_path / "home", f"http://{PUBLIC_HOST}:{public_port}/mcp",
                              AEGRESS_MCP_GATEWAY_TOKEN="aeg_" + "x" * 40)
    assert (code, report["reason"]) == (3, "wrong-target"), report
    assert "not Aegress" in report["message"] and "never at the MCP server" in report["hint"]


def test_a_bad_or_revoked_token_is_an_authentication_failure(sshd: Sshd, tunnelled: Tunnelled) -> None:
    gw = tunnelled.gw
    with reverse_tunnel(sshd, tunnelled.public_port, _port(gw.url)):
        code, report = _check(gw.home, tunnelled.public_url, AEGRESS_MCP_GATEWAY_TOKEN="aeg_" + "x" * 40)
        assert (code, report["reason"]) == (3, "auth-failed"), report
        assert "invalid or revoked" in report["message"] and "x" * 40 not in json.dumps(report)
        code, report = _check(gw.home, tunnelled.public_url, "--token-ref", "keyring:token:acme:nobody")
        assert (code, report["reason"]) == (3, "auth-failed") and "No secret is kept" in report["message"]
        code, report = _check(gw.home, tunnelled.public_url)
        assert (code, report["reason"]) == (3, "auth-failed") and "no token" in report["message"]

        carol = setup_tenant(gw.home, "acme", "carol")
        assert _check(gw.home, tunnelled.public_url, AEGRESS_MCP_GATEWAY_TOKEN=carol)[0] == 0
        token_id = next(t["id"] for t in aegress_json(gw.home, "token", "list", "--actor", "carol")
                        if t["tenant"] == "acme")
        aegress(gw.home, "token", "revoke", token_id, "--yes")
        code, report = _check(gw.home, tunnelled.public_url, AEGRESS_MCP_GATEWAY_TOKEN=carol)
        assert (code, report["reason"]) == (3, "auth-failed"), report


def test_evidence_missing_when_the_check_reads_another_store(sshd: Sshd, tunnelled: Tunnelled,
                                                           tmp_path: Path) -> None:
    gw = tunnelled.gw
    other = tmp_path / "other-home"
    with reverse_tunnel(sshd, tunnelled.public_port, _port(gw.url)):
        code, report = _check(other, tunnelled.public_url, AEGRESS_MCP_GATEWAY_TOKEN=tunnelled.alice)
        assert (code, report["reason"]) == (3, "evidence-missing"), report
        assert "no Aegress database" in report["message"]
        assert [s["ok"] for s in report["steps"]] == [True, True, True, True, False]  # the call itself went through
        setup_tenant(other, "elsewhere", "someone")  # a data dir of its own, with its own master key
        code, report = _check(other, tunnelled.public_url, AEGRESS_MCP_GATEWAY_TOKEN=tunnelled.alice)
        assert (code, report["reason"]) == (3, "evidence-missing")
        assert "not the gateway's store" in report["message"]


def test_evidence_missing_when_the_gateway_records_nothing(sshd: Sshd, tmp_path: Path) -> None:
    home = tmp_path / "home"
    token = setup_tenant(home, "acme", "alice")
    public_port = _free_port(PUBLIC_HOST)
    public_url = f"http://{PUBLIC_HOST}:{public_port}/mcp"
    with run_gateway(home, "--ingress", "tunnel", "--public-url", public_url, "--no-evidence") as gw, \
            reverse_tunnel(sshd, public_port, _port(gw.url)):
        code, report = _check(home, public_url, AEGRESS_MCP_GATEWAY_TOKEN=token)
    assert (code, report["reason"]) == (3, "evidence-missing"), report
    assert "--no-evidence" in report["message"]


def test_a_public_name_the_gateway_does_not_know_is_host_refused(sshd: Sshd, tunnelled: Tunnelled) -> None:
    """A tunnel whose public URL is not the gateway's --public-url: the Host check refuses it (421)."""
    gw = tunnelled.gw
    other_port = _free_port(PUBLIC_HOST)
    with reverse_tunnel(sshd, other_port, _port(gw.url)):
        code, report = _check(gw.home, f"http://{PUBLIC_HOST}:{other_port}/mcp",
                              AEGRESS_MCP_GATEWAY_TOKEN=tunnelled.alice)
    assert (code, report["reason"]) == (3, "host-refused"), report
    assert "--public-url" in report["hint"]


# -- what tunnel mode changes at the edge ----------------------------------------------------------------
def test_a_loopback_peer_is_never_trusted(tunnelled: Tunnelled) -> None:
    import httpx2

    gw = tunnelled.gw
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
    hdrs = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
    with httpx2.Client(timeout=30) as http:
        assert http.post(gw.url, content=body, headers=hdrs).status_code == 401  # from 127.0.0.1, no token
        spoofed = {**hdrs, "X-Forwarded-For": "127.0.0.1", "X-Forwarded-Host": f"{PUBLIC_HOST}:1",
                   "Host": "evil.example"}
        assert http.post(gw.url, content=body, headers=spoofed).status_code == 421  # no proxy is named: ignored
        public = {**hdrs, "Host": f"{PUBLIC_HOST}:{tunnelled.public_port}", "Authorization": f"Bearer {tunnelled.bob}"}
        assert http.post(gw.url, content=body, headers=public).status_code != 421  # the public name passes


def test_the_per_address_cap_makes_room_for_a_tunnel(tunnelled: Tunnelled) -> None:
    """Behind a tunnel every connection comes from one loopback address: the default per-address cap (100)
    would refuse the 101st client, so tunnel mode raises it to --max-connections."""
    port = _port(tunnelled.gw.url)
    socks = []
    try:
        for _ in range(110):
            socks.append(socket.create_connection(("127.0.0.1", port), timeout=10))
        for s in socks:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        statuses = {s.recv(64).split(b" ")[1] for s in socks}
    finally:
        for s in socks:
            s.close()
    assert statuses == {b"200"}


def test_forwarded_headers_only_from_a_named_proxy(tmp_path: Path) -> None:
    import httpx2

    home = tmp_path / "home"
    token = setup_tenant(home, "acme", "alice")
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}})
    hdrs = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream",
            "Authorization": f"Bearer {token}"}
    with run_gateway(home, "--public-url", "https://mcp.example.com/mcp", "--trusted-proxy", "127.0.0.1",
                     "--auth-throttle", "3") as gw, httpx2.Client(timeout=30) as http:
        def post(**extra: str) -> int:
            return int(http.post(gw.url, content=body, headers={**hdrs, **extra}).status_code)

        assert post(Host="mcp.example.com") == 200  # the public name, as a reverse proxy passes it on
        assert post(Host="evil.example") == 421
        assert post(**{"X-Forwarded-Host": "mcp.example.com", "Host": "127.0.0.1:1"}) == 200
        assert post(**{"X-Forwarded-Host": "evil.example"}) == 421  # the named proxy's word is what counts
        assert post(Origin="https://mcp.example.com") == 200
        assert post(Origin="https://evil.example") == 403
        # failed authentications count per forwarded client: one client's failures do not throttle another
        bad = {"Authorization": "Bearer aeg_" + "y" * 40}
        assert [post(**bad, **{"X-Forwarded-For": "203.0.113.1"}) for _ in range(5)][-1] == 429
        assert post(**bad, **{"X-Forwarded-For": "203.0.113.2"}) == 401


# -- static binding ---------------------------------------------------------------------------------------
def test_static_binding_accepts_only_the_configured_token(sshd: Sshd, tmp_path: Path) -> None:
    home = tmp_path / "home"
    alice = setup_tenant(home, "acme", "alice")
    bob = setup_tenant(home, "acme", "bob")
    allow_all(home, "acme")
    public_port = _free_port(PUBLIC_HOST)
    public_url = f"http://{PUBLIC_HOST}:{public_port}/mcp"
    static = {"AEGRESS_STATIC_TENANT": "acme", "AEGRESS_STATIC_ACTOR": "alice", "MCP_INGRESS_MODE": "tunnel",
              "MCP_PUBLIC_URL": public_url, "MCP_AUTH_MODE": "bearer"}
    with run_gateway(home, env=static) as gw, reverse_tunnel(sshd, public_port, _port(gw.url)):
        assert "only the token under keyring:token:acme:alice (tenant acme, actor alice)" in \
            gw.proc.wait_for("Static binding")
        code, report = _check(home, public_url, **static)  # the check reads the same binding
        assert (code, report["reason"]) == (0, None), report
        code, report = _check(home, public_url, AEGRESS_MCP_GATEWAY_TOKEN=bob)  # valid, but not the bound one
        assert (code, report["reason"]) == (3, "auth-failed"), report
        assert "invalid or revoked" in report["message"]

        async def go() -> str:
            async with mcp_client(public_url, alice) as client:
                return str((await client.list_tools()).tools is not None)

        assert run(go()) == "True"


def _serve_fails(home: Path, *args: str, **env: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "aegress_cli.main", "serve", "--port", "0", *args],
                          capture_output=True, text=True, env=cli_env(home, **env), cwd=ROOT, timeout=60)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "listening on" not in proc.stdout
    return proc.stderr


def test_serve_refuses_unsafe_or_broken_tunnel_settings(tmp_path: Path) -> None:
    home = tmp_path / "home"
    alice = setup_tenant(home, "acme", "alice")
    bob = setup_tenant(home, "acme", "bob")
    url = "https://mcp.example.com/mcp"
    assert "needs the public URL" in _serve_fails(home, "--ingress", "tunnel")
    assert "binds loopback only" in _serve_fails(home, "--ingress", "tunnel", "--public-url", url, "--host",
                                                 "0.0.0.0", "--allow-public-bind")
    assert "unencrypted" in _serve_fails(home, "--ingress", "tunnel", "--public-url", "http://mcp.example.com/mcp")
    assert "not a known mode" in _serve_fails(home, MCP_AUTH_MODE="none")
    refused = subprocess.run([sys.executable, "-m", "aegress_cli.main", "serve", "--port", "0"], capture_output=True,
                             text=True, env=cli_env(home, MCP_INGRESS_MODE="funnel"), cwd=ROOT, timeout=60)
    assert refused.returncode == 2 and "'funnel' is not one of 'direct', 'tunnel'" in refused.stderr  # the parser's
    # static binding: fail closed at start-up
    assert "AEGRESS_STATIC_ACTOR not set" in _serve_fails(home, AEGRESS_STATIC_TENANT="acme")
    err = _serve_fails(home, AEGRESS_STATIC_TENANT="acme", AEGRESS_STATIC_ACTOR="carol")
    assert "No secret is kept under keyring:token:acme:carol" in err
    token_file = tmp_path / "token"
    fd = os.open(token_file, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, bob.encode())
    os.close(fd)
    err = _serve_fails(home, AEGRESS_STATIC_TENANT="acme", AEGRESS_STATIC_ACTOR="alice",
                       AEGRESS_STATIC_TOKEN_REF=f"file:{token_file}")
    assert "bound to tenant 'acme', actor 'bob', not the configured tenant 'acme', actor 'alice'" in err
    assert bob not in err and alice not in err
    token_file.write_text("aeg_" + "z" * 40)
    err = _serve_fails(home, "--static-tenant", "acme", "--static-actor", "alice", "--static-token-ref",
                       f"file:{token_file}")
    assert "is not one this gateway issued" in err and "z" * 40 not in err
    token_file.chmod(0o644)
    assert "readable by other users" in _serve_fails(home, AEGRESS_STATIC_TENANT="acme", AEGRESS_STATIC_ACTOR="alice",
                                                     AEGRESS_STATIC_TOKEN_REF=f"file:{token_file}")
    token_id = next(t["id"] for t in aegress_json(home, "token", "list", "--actor", "alice"))
    aegress(home, "token", "revoke", token_id, "--yes")
    assert "is revoked" in _serve_fails(home, AEGRESS_STATIC_TENANT="acme", AEGRESS_STATIC_ACTOR="alice")


# -- the commands themselves ------------------------------------------------------------------------------
def test_tunnel_status_names_what_is_missing(tmp_path: Path) -> None:
    home = tmp_path / "home"
    proc = aegress(home, "tunnel", "status", check=False, MCP_TUNNEL_PROVIDER="ssh", MCP_TUNNEL_OWNER="ops")
    assert proc.returncode == 3
    assert "missing from the tunnel inventory: MCP_TUNNEL_ID, MCP_TUNNEL_WORKSPACE." in proc.stderr
    assert "provider   ssh (SSH reverse tunnel (ssh -R))" in proc.stdout
    full = {"MCP_TUNNEL_PROVIDER": "cloudflared", "MCP_TUNNEL_ID": "6ff42ae2", "MCP_TUNNEL_WORKSPACE": "acme-account",
            "MCP_TUNNEL_OWNER": "platform@acme.example"}
    data = json.loads(aegress(home, "tunnel", "status", "--json", **full).stdout)
    assert data["ok"] is True and data["missing"] == [] and data["id"] == "6ff42ae2"


def test_tunnel_commands_start_without_the_server_stack(tmp_path: Path) -> None:
    home = tmp_path / "home"
    closed = _free_port("127.0.0.1")
    for args, code in ((["tunnel", "status"], 3),
                       (["tunnel", "check", "--url", f"http://127.0.0.1:{closed}/mcp", "--json"], 3)):
        proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "aegress_cli.main", *args],
                              capture_output=True, text=True, env=cli_env(home), cwd=ROOT, timeout=60)
        assert proc.returncode == code, proc.stderr[-2000:]
        modules = {line.split("|")[-1].strip().split(".")[0] for line in proc.stderr.splitlines()
                   if line.startswith("import time:")}
        assert not modules & set(FORBIDDEN), (args, sorted(modules & set(FORBIDDEN)))
    assert json.loads(proc.stdout)["reason"] == "tunnel-down"
