"""Client ID metadata documents: the SDK's OAuthClientProvider uses an https URL as its client id; the
gateway fetches that document (SSRF-guarded) and runs the flow on it. A gateway that has not been told
to allow private addresses refuses the same document on loopback without ever connecting to it."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.e2e.oauth_support import Browser, MemoryStorage, UserAgent, oauth_client, oauth_provider
from tests.procs import Gateway, add_stdio_fixture, aegress, aegress_json, allow_all, run, run_gateway
from tests.servers.tls_docs import DocServer

PASSWORD = "alice-password-1"
CB = "http://127.0.0.1:5556/callback"


@dataclass
class World:
    allowing: Gateway
    guarded: Gateway
    docs: DocServer

    @property
    def doc_url(self) -> str:
        return self.docs.base + "/client.json"


def _home(root: object, name: str) -> object:
    home = root / name / "home"  # type: ignore[operator]
    aegress(home, "tenant", "create", "acme")
    allow_all(home, "acme")
    add_stdio_fixture(home, "acme", "files")
    aegress(home, "actor", "add", "-t", "acme", "alice", "--password", input=PASSWORD + "\n")
    return home


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("oauth-cimd")
    with DocServer(root) as docs:
        url = docs.base + "/client.json"
        docs.documents["/client.json"] = {"client_id": url, "client_name": "Metadata Document App",
                                          "redirect_uris": [CB], "grant_types": ["authorization_code",
                                                                                 "refresh_token"],
                                          "token_endpoint_auth_method": "none"}
        env = {"MCP_AUTH_MODE": "oauth", "SSL_CERT_FILE": str(docs.ca)}
        with (run_gateway(_home(root, "a"), env={**env, "AEGRESS_OAUTH_METADATA_ALLOW_PRIVATE": "1"}) as allowing,
              run_gateway(_home(root, "b"), env=env) as guarded):
            yield World(allowing, guarded, docs)


def test_the_sdk_signs_in_with_a_client_id_metadata_document(world: World) -> None:
    storage = MemoryStorage()
    agent = UserAgent(Browser(world.allowing.base), "acme", "alice", PASSWORD)
    provider = oauth_provider(world.allowing.url, storage, agent, redirect_uri=CB, client_metadata_url=world.doc_url)

    async def go() -> str:
        async with oauth_client(world.allowing.url, provider) as c:
            return str((await c.call_tool("files__whoami", {})).content[0].text)

    assert run(go()) == "files"
    assert storage.client_info.client_id == world.doc_url  # no registration: the URL is the client id
    assert "client_id=" + world.doc_url.replace(":", "%3A").replace("/", "%2F") in agent.authorize_urls[0]
    clients = aegress_json(world.allowing.home, "oauth", "clients", "list")
    assert [(c["id"], c["kind"], c["name"]) for c in clients] == [(world.doc_url, "metadata-document",
                                                                   "Metadata Document App")]
    # revoking the document's client refuses it from then on
    aegress(world.allowing.home, "oauth", "clients", "revoke", world.doc_url, "--yes")
    page = Browser(world.allowing.base).get(agent.authorize_urls[0])
    assert page.status_code == 400 and "location" not in page.headers


def test_a_document_on_a_private_address_is_refused_without_a_fetch(world: World) -> None:
    before = world.docs.hits.get("/client.json", 0)
    url = (world.guarded.base + "/oauth/authorize?response_type=code&code_challenge_method=S256&code_challenge="
           + "a" * 43 + f"&redirect_uri={CB}&client_id=" + world.doc_url)
    page = Browser(world.guarded.base).get(url)
    assert page.status_code == 400 and "location" not in page.headers and "unknown" in page.text
    assert world.docs.hits.get("/client.json", 0) == before
