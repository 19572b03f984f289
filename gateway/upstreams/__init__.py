"""The upstream seam: one `UpstreamConnection` interface, a stdio and a Streamable HTTP transport."""

from __future__ import annotations

from gateway.types import UpstreamSpec
from gateway.upstreams.base import Sink, UpstreamConnection


def connect(spec: UpstreamSpec, *, protocol_version: str, capabilities: dict, timeout: float) -> UpstreamConnection:
    """Build (not start) the connection for a registered upstream."""
    if spec.transport == "stdio":
        from gateway.upstreams.stdio import StdioConnection

        return StdioConnection(spec, protocol_version=protocol_version, capabilities=capabilities, timeout=timeout)
    from gateway.upstreams.http import HttpConnection

    return HttpConnection(spec, protocol_version=protocol_version, capabilities=capabilities, timeout=timeout)


__all__ = ["Sink", "UpstreamConnection", "connect"]
