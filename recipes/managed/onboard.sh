#!/usr/bin/env bash
# Onboard one tenant onto the managed Aegress service: the four steps of
# docs/operations/aegress-managed-saas.md. Run by the service's operator, with the `aegress` CLI pointed at
# the service's database (AEGRESS_DATABASE_URL) and a data dir holding its master key (AEGRESS_HOME).
#
# Fill the values with `aegress deploy render managed --out DIR --tenant T --public-url URL --set ...`,
# or export the variables below before running the unrendered file. It stops at the first failure.
set -euo pipefail

TENANT="${AEGRESS_TENANT_ID}"          # the tenant id, e.g. acme
ACTOR="${AEGRESS_ACTOR_ID}"            # its first person, e.g. alice@acme.example
MCP_URL="${AEGRESS_PUBLIC_URL}"        # the team endpoint, e.g. https://mcp.aegress.example/mcp
UPSTREAM="${AEGRESS_UPSTREAM_NAME}"    # the tenant's first upstream MCP server, e.g. github
UPSTREAM_URL="${AEGRESS_UPSTREAM_URL}" # its Streamable HTTP URL
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

# 1. Create the tenant and its first actor.
aegress tenant create "$TENANT"
aegress actor add --tenant "$TENANT" "$ACTOR"

# 2. Apply its policy: origins, tools, destructive actions (policy.toml beside this script).
aegress policy check "$HERE/policy.toml"
aegress policy apply "$HERE/policy.toml" --tenant "$TENANT" --yes

# 3. Connect its upstream. A credential it needs goes in the service's secret store first
#    (aegress upstream secret set ...) and is referenced here as --header Authorization=keyring:NAME.
aegress upstream add --tenant "$TENANT" "$UPSTREAM" --url "$UPSTREAM_URL"
aegress upstream test --tenant "$TENANT" "$UPSTREAM"

# 4. The person's token (printed once, never stored by the service), to hand over on a private channel.
#    OAuth consent bound to the tenant is issue 13 and not built yet: the token is today's path.
aegress token issue --tenant "$TENANT" --actor "$ACTOR" --label onboarding --no-keep

cat <<NEXT

Give $ACTOR the token above privately, and these commands for their machine:
  export AEGRESS_MCP_GATEWAY_TOKEN=<the token>
  aegress client setup claude-code --tenant $TENANT --actor $ACTOR --url $MCP_URL
  aegress client doctor claude-code
Then watch: aegress audit tail --tenant $TENANT --follow   and   aegress review list --tenant $TENANT
NEXT
