"""OAuth mode (MCP_AUTH_MODE=oauth): the MCP authorization spec, with tenant-bound consent.

    resource.py    settings, the canonical resource URIs (RFC 8707) and metadata documents (RFC 9728, 8414)
    claims.py      pure: which algorithms fit which keys, scopes, audience, claim -> tenant/actor mapping
    fetch.py       bounded JSON GETs (JWKS, issuer metadata, client ID metadata documents), SSRF-guarded
    jwks.py        issuers' signing keys: cached, refreshed on rotation, at most once per interval
    keys.py        the embedded authorization server's signing keys (files under the data dir, never the db)
    validator.py   the authenticate stage in OAuth mode: Authorization header -> Identity
    signed.py      HMAC-signed, time-limited values (the pending request, the sign-in session, CSRF)
    passwords.py   scrypt hashes of actor passwords
    pages.py       pure: the sign-in and consent pages (plain HTML, no script)
    server.py      the routes: metadata, /oauth/authorize, /token, /register, /revoke, /jwks, login links
    admin.py       operator actions (issuers, clients, grants, passwords, login links), each sealed

The HTTP edge (gateway.transport) calls `Pipeline.authenticate`, which hands the header to the validator
when OAuth mode is on; everything after authentication (bind, decide, forward, record) is unchanged.
"""
