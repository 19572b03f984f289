"""OAuth mode's guarded fetch (client ID metadata documents, issuer metadata and keys) against a real https
server on loopback: private addresses are refused before any connection, only https where required,
no redirects, a size cap, and the certificate checked against the trust store (SSL_CERT_FILE)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.errors import AegressError, InvalidInput
from gateway.oauth.fetch import FetchError, get_json
from tests.servers.tls_docs import DocServer


@pytest.fixture
def docs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[DocServer]:
    with DocServer(tmp_path) as server:
        assert server.ca is not None
        monkeypatch.setenv("SSL_CERT_FILE", str(server.ca))
        yield server


def fetch(url: str, **kwargs: object) -> object:
    return asyncio.run(get_json(url, **kwargs))  # type: ignore[arg-type]


def test_a_private_address_is_refused_before_connecting(docs: DocServer) -> None:
    docs.documents["/client.json"] = {"client_id": "x"}
    with pytest.raises(FetchError, match="loopback or private"):
        fetch(docs.base + "/client.json", allow_private=False, https_only=True)
    assert docs.hits == {}  # never reached
    assert fetch(docs.base + "/client.json", allow_private=True, https_only=True) == {"client_id": "x"}
    assert docs.hits == {"/client.json": 1}


def test_https_only_no_redirects_size_cap_and_certificates(docs: DocServer, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(InvalidInput, match="https"):
        fetch(docs.base.replace("https:", "http:") + "/x", allow_private=True, https_only=True)
    with pytest.raises(InvalidInput, match="https"):
        fetch("http://example.com/x", allow_private=True)  # plain http only on loopback
    docs.documents["/moved"] = (302, {"location": docs.base + "/client.json"})
    with pytest.raises(FetchError, match="302"):
        fetch(docs.base + "/moved", allow_private=True)
    docs.documents["/big"] = {"pad": "x" * 5000}
    with pytest.raises(AegressError):
        fetch(docs.base + "/big", allow_private=True, limit=1000)
    with pytest.raises(InvalidInput):
        fetch("https://user:pw@127.0.0.1/x", allow_private=True)
    monkeypatch.delenv("SSL_CERT_FILE")  # the test CA is not trusted any more
    docs.documents["/client.json"] = {"ok": True}
    with pytest.raises(FetchError, match=r"SSL|certificate|Could not fetch"):
        fetch(docs.base + "/client.json", allow_private=True)
