"""gateway.deploy's pure parts: the path table, value checks and rendering (no files, no processes)."""

from __future__ import annotations

import pytest

from gateway import deploy
from gateway.errors import InvalidInput, UsageError


def test_the_five_paths_and_one_recommendation() -> None:
    assert [p.name for p in deploy.PATHS] == ["managed", "tunnel", "docker", "azure", "aws-lambda"]
    assert [p.name for p in deploy.PATHS if p.recommended] == ["managed"]
    for path in deploy.PATHS:
        assert path.files and all(f.split("/")[0] in path.dirs for f in path.files)
        assert any(f.endswith("README.md") for f in path.files)
        assert path.runbook.startswith("docs/operations/")
    assert deploy.find_path("aws-lambda").title.startswith("AWS Lambda")
    with pytest.raises(UsageError) as info:
        deploy.find_path("heroku")
    assert "aws-lambda" in (info.value.hint or "")


def test_values_from_options_and_pairs() -> None:
    values = deploy.parse_values(["region=eu-west-1", "AEGRESS_SUBNET_IDS=subnet-a,subnet-b", "replicas=3"],
                                 {"public-url": "https://mcp.example.com/mcp", "image": None})
    assert values == {"AEGRESS_PUBLIC_URL": "https://mcp.example.com/mcp", "AEGRESS_PUBLIC_HOST": "mcp.example.com",
                      "AEGRESS_REGION": "eu-west-1", "AEGRESS_SUBNET_IDS": "subnet-a,subnet-b",
                      "AEGRESS_REPLICAS": "3"}
    with pytest.raises(UsageError):
        deploy.parse_values(["no-equals-sign"])
    with pytest.raises(InvalidInput):
        deploy.parse_values(["public-url=ftp://x"])
    with pytest.raises(InvalidInput):
        deploy.parse_values(["replicas=0"])


@pytest.mark.parametrize("pair", [
    "database-url=postgresql://u@h/d",            # a secret by name, whatever the value
    "master-key=00",
    "redis-password=x",
    "github-token=x",
    "region=aeg_" + "A" * 40,                     # values that look like secrets, under any name
    "region=postgresql://user:hunter2@db/x",
    "region=PRIVATE+KEY+aegress+abcd+AAAA",
    "region=" + "ab" * 32,
])
def test_secrets_are_refused(pair: str) -> None:
    with pytest.raises(InvalidInput) as info:
        deploy.parse_values([pair])
    assert info.value.code == "secret-value"
    assert "hunter2" not in info.value.message and "AAAA" not in info.value.message


def test_secret_references_are_not_secrets() -> None:
    arn = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:aegress/master-key-AbCdEf"
    assert deploy.parse_values([f"master-key-secret-arn={arn}"]) == {"AEGRESS_MASTER_KEY_SECRET_ARN": arn}
    assert deploy.is_secret_key("AEGRESS_DB_PASSWORD") and not deploy.is_secret_key("AEGRESS_DB_PASSWORD_SECRET_ARN")


@pytest.mark.parametrize("bad", ['a"b', "a'b", "a`b", "$(id)", "a\\b", "a\nb"])
def test_values_cannot_break_out_of_a_file(bad: str) -> None:
    with pytest.raises(InvalidInput):
        deploy.parse_values([f"region={bad}"])


def test_render_fills_known_values_and_leaves_the_rest() -> None:
    files: dict[str, str | bytes] = {
        "x/app.yaml": "image: ${AEGRESS_IMAGE}\nurl: ${AEGRESS_PUBLIC_URL}\ndb: ${AEGRESS_DATABASE_URL}\n",
        "x/README.md": "Region ${AEGRESS_REGION}; shell ${HOME} and $AEGRESS_IMAGE stay as they are.\n",
        "x/logo.png": b"\x89PNG\r\n\x1a\n\xff",
    }
    out = deploy.render(files, {"AEGRESS_IMAGE": "registry.example/aegress:1", "AEGRESS_PUBLIC_HOST": "h"})
    assert out.files["x/app.yaml"] == ("image: registry.example/aegress:1\nurl: ${AEGRESS_PUBLIC_URL}\n"
                                       "db: ${AEGRESS_DATABASE_URL}\n")
    assert out.files["x/README.md"] == files["x/README.md"]
    assert out.files["x/logo.png"] == files["x/logo.png"]
    assert out.filled == {"AEGRESS_IMAGE": ["x/app.yaml"]}
    assert out.unfilled == {"AEGRESS_PUBLIC_URL": ["x/app.yaml"], "AEGRESS_REGION": ["x/README.md"]}
    assert out.secrets == {"AEGRESS_DATABASE_URL": ["x/app.yaml"]}
    with pytest.raises(UsageError) as info:
        deploy.render(files, {"AEGRESS_IMAEG": "typo"})
    assert info.value.code == "unknown-value" and "AEGRESS_IMAGE" in (info.value.hint or "")
