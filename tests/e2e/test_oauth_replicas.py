"""OAuth mode across replicas: two `aegress serve` processes on one Postgres database (the machine's),
each with its own data dir holding the same master key and signing keys, behind one public URL. A code
issued through one is redeemed at the other, once; a refresh token rotated at one and replayed at the
other revokes the grant everywhere; two replicas racing for one code let exactly one win."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import httpx2
import pytest

from tests.e2e.oauth_support import Browser, redirect_params
from tests.e2e.test_oauth_server import CB, INIT, MCP_HEADERS, PASSWORD, authorize_url, pkce
from tests.procs import add_stdio_fixture, aegress, allow_all, run_gateway

PUBLIC = "http://localhost:1"  # the load balancer's address: both replicas publish it, clients never dial it


def _status(base: str, access: str) -> int:
    return httpx2.post(base + "/mcp", headers={**MCP_HEADERS, "authorization": f"Bearer {access}"}, json=INIT,
                       timeout=30).status_code


def _token(base: str, **form: str) -> httpx2.Response:
    return httpx2.post(base + "/oauth/token", data=form, timeout=30)


@pytest.mark.slow
def test_codes_and_refresh_tokens_are_single_use_across_replicas(tmp_path: Path, pg_database: object,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AEGRESS_DATABASE_URL", pg_database.schema_url())  # type: ignore[attr-defined]
    home_a, home_b = tmp_path / "a", tmp_path / "b"
    aegress(home_a, "tenant", "create", "acme")
    allow_all(home_a, "acme")
    add_stdio_fixture(home_a, "acme", "files")
    aegress(home_a, "actor", "add", "-t", "acme", "alice", "--password", input=PASSWORD + "\n")
    env = {"MCP_AUTH_MODE": "oauth"}
    with run_gateway(home_a, "--public-url", PUBLIC, env={**env, "AEGRESS_REPLICA_ID": "a"}) as a:
        (home_b / "secrets").mkdir(parents=True, mode=0o700)
        for name in ("master.key", "oauth-signing-keys.json"):
            shutil.copy2(home_a / "secrets" / name, home_b / "secrets" / name)
        with run_gateway(home_b, "--public-url", PUBLIC, env={**env, "AEGRESS_REPLICA_ID": "b"}) as b:
            client = httpx2.post(b.base + "/oauth/register", json={
                "redirect_uris": [CB], "token_endpoint_auth_method": "none",
                "grant_types": ["authorization_code", "refresh_token"]}, timeout=30).json()
            cid = client["client_id"]

            def code(challenge: str) -> str:
                url = authorize_url(a, cid, challenge)  # type: ignore[arg-type]
                answer = Browser(a.base, PUBLIC).sign_in_and_consent(url, "acme", "alice", PASSWORD)
                params = redirect_params(answer)
                assert params["iss"] == PUBLIC
                return params["code"]

            verifier, challenge = pkce()
            c1 = code(challenge)
            got = _token(b.base, grant_type="authorization_code", client_id=cid, code=c1, code_verifier=verifier,
                         redirect_uri=CB)
            assert got.status_code == 200, got.text
            tokens = got.json()
            assert _status(a.base, tokens["access_token"]) == 200 and _status(b.base, tokens["access_token"]) == 200
            replay = _token(a.base, grant_type="authorization_code", client_id=cid, code=c1, code_verifier=verifier,
                            redirect_uri=CB)
            assert replay.json()["error"] == "invalid_grant"
            assert _status(a.base, tokens["access_token"]) == 401 and _status(b.base, tokens["access_token"]) == 401

            # refresh rotated at A, the spent token replayed at B: the grant is revoked on both
            verifier, challenge = pkce()
            tokens = _token(a.base, grant_type="authorization_code", client_id=cid, code=code(challenge),
                            code_verifier=verifier, redirect_uri=CB).json()
            rotated = _token(a.base, grant_type="refresh_token", client_id=cid, refresh_token=tokens["refresh_token"])
            assert rotated.status_code == 200, rotated.text
            reuse = _token(b.base, grant_type="refresh_token", client_id=cid, refresh_token=tokens["refresh_token"])
            assert reuse.json()["error"] == "invalid_grant"
            assert _status(a.base, rotated.json()["access_token"]) == 401
            assert _status(b.base, rotated.json()["access_token"]) == 401

            # both replicas race for one code: exactly one wins
            verifier, challenge = pkce()
            c3 = code(challenge)
            results: list[int] = []
            barrier = threading.Barrier(2)

            def redeem(base: str) -> None:
                barrier.wait(10)
                results.append(_token(base, grant_type="authorization_code", client_id=cid, code=c3,
                                      code_verifier=verifier, redirect_uri=CB).status_code)

            threads = [threading.Thread(target=redeem, args=(base,)) for base in (a.base, b.base)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            assert sorted(results) == [200, 400]
