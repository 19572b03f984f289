"""A minimal browser for the embedded authorization server's pages: plain HTTP, a cookie jar that keeps
`Secure` cookies on loopback (as browsers do for 127.0.0.1), HTML forms parsed with the stdlib, no
redirects followed (the test looks at each one). Also an in-memory TokenStorage for the SDK's
OAuthClientProvider, and a redirect/callback pair that drives the pages like a user would."""

from __future__ import annotations

from dataclasses import dataclass, field
from html.parser import HTMLParser
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qs, urljoin, urlsplit

import httpx2


@dataclass
class Form:
    action: str
    fields: dict[str, str] = field(default_factory=dict)
    buttons: dict[str, list[str]] = field(default_factory=dict)


class _Forms(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.forms: list[Form] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.forms.append(Form(a.get("action", "")))
        elif self.forms and tag == "input" and a.get("name"):
            self.forms[-1].fields[a["name"]] = a.get("value", "")
        elif self.forms and tag == "button" and a.get("name"):
            self.forms[-1].buttons.setdefault(a["name"], []).append(a.get("value", ""))


def forms_of(html: str) -> list[Form]:
    parser = _Forms()
    parser.feed(html)
    return parser.forms


@dataclass
class Browser:
    base: str
    origin: str = ""  # what the page's origin is to the browser (the public URL), default `base`
    cookies: dict[str, str] = field(default_factory=dict)
    set_cookies: list[str] = field(default_factory=list)  # every Set-Cookie seen, to check attributes

    def _absorb(self, r: httpx2.Response) -> httpx2.Response:
        for header in r.headers.get_list("set-cookie"):
            self.set_cookies.append(header)
            jar: SimpleCookie = SimpleCookie()
            jar.load(header)
            for name, morsel in jar.items():
                if morsel["max-age"] == "0":
                    self.cookies.pop(name, None)
                else:
                    self.cookies[name] = morsel.value
        return r

    def _headers(self, extra: dict[str, str] | None) -> dict[str, str]:
        headers = dict(extra or {})
        if self.cookies:
            headers["cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        return headers

    def get(self, url: str, headers: dict[str, str] | None = None) -> httpx2.Response:
        return self._absorb(httpx2.get(urljoin(self.base, url), headers=self._headers(headers), timeout=30))

    def post(self, url: str, data: dict[str, str], headers: dict[str, str] | None = None) -> httpx2.Response:
        hdrs = {"origin": self.origin or self.base, "sec-fetch-site": "same-origin", **(headers or {})}
        return self._absorb(httpx2.post(urljoin(self.base, url), data=data, headers=self._headers(hdrs), timeout=30))

    def submit(self, page: httpx2.Response, extra: dict[str, str] | None = None,
               headers: dict[str, str] | None = None) -> httpx2.Response:
        form = forms_of(page.text)[0]
        return self.post(form.action, {**form.fields, **(extra or {})}, headers)

    def sign_in_and_consent(self, authorize_url: str, tenant: str | None, actor: str, password: str,
                            decision: str = "allow") -> httpx2.Response:
        """GET the authorization URL, sign in when asked, answer the consent page; the 303 back."""
        page = self.get(authorize_url)
        assert page.status_code == 200, page.text
        if "Sign in" in page.text:
            fields = {"actor": actor, "password": password}
            if tenant is not None and "name=tenant" in page.text and "type=hidden name=tenant" not in page.text:
                fields["tenant"] = tenant
            page = self.submit(page, fields)
            assert page.status_code == 200 and "Allow access?" in page.text, page.text
        assert "Allow access?" in page.text, page.text
        answer = self.submit(page, {"action": decision})
        assert answer.status_code == 303, answer.text
        return answer


def redirect_params(response: httpx2.Response) -> dict[str, str]:
    location = response.headers["location"]
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


class MemoryStorage:
    """TokenStorage for OAuthClientProvider, kept in memory."""

    def __init__(self) -> None:
        self.tokens: Any = None
        self.client_info: Any = None
        self.history: list[Any] = []

    async def get_tokens(self) -> Any:
        return self.tokens

    async def set_tokens(self, tokens: Any) -> None:
        self.tokens = tokens
        self.history.append(tokens)

    async def get_client_info(self) -> Any:
        return self.client_info

    async def set_client_info(self, client_info: Any) -> None:
        self.client_info = client_info


@dataclass
class UserAgent:
    """The provider's redirect and callback handlers, played by a person at `browser`."""

    browser: Browser
    tenant: str | None
    actor: str
    password: str
    result: dict[str, str] = field(default_factory=dict)
    authorize_urls: list[str] = field(default_factory=list)
    refuse: bool = False

    async def redirect(self, url: str) -> None:
        import anyio

        self.authorize_urls.append(url)
        if self.refuse:
            raise RuntimeError("the user is not signing in again")
        answer = await anyio.to_thread.run_sync(
            lambda: self.browser.sign_in_and_consent(url, self.tenant, self.actor, self.password))
        self.result = redirect_params(answer)

    async def callback(self) -> Any:
        from mcp.shared.auth import AuthorizationCodeResult

        return AuthorizationCodeResult(code=self.result["code"], state=self.result.get("state"),
                                       iss=self.result.get("iss"))


def oauth_provider(server_url: str, storage: MemoryStorage, agent: UserAgent, *,
                   redirect_uri: str = "http://127.0.0.1:33418/callback", client_metadata_url: str | None = None,
                   **metadata: Any) -> Any:
    from mcp.client.auth import OAuthClientProvider
    from mcp.shared.auth import OAuthClientMetadata

    meta = OAuthClientMetadata(redirect_uris=[redirect_uri], client_name="SDK test client",
                               token_endpoint_auth_method="none",
                               grant_types=["authorization_code", "refresh_token"], **metadata)
    return OAuthClientProvider(server_url, meta, storage, redirect_handler=agent.redirect,
                               callback_handler=agent.callback, client_metadata_url=client_metadata_url)


def oauth_client(url: str, provider: Any, **kwargs: Any) -> Any:
    """The SDK client over Streamable HTTP with the OAuth provider as the HTTP client's auth."""
    import contextlib

    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    @contextlib.asynccontextmanager
    async def opened() -> Any:
        async with (
            httpx2.AsyncClient(auth=provider, timeout=httpx2.Timeout(30.0, read=60.0)) as http,
            Client(streamable_http_client(url, http_client=http), mode="legacy", **kwargs) as client,
        ):
            yield client

    return opened()

