"""The bundled demo upstream (a small stdio MCP server); run with `python -m gateway.demo`."""
