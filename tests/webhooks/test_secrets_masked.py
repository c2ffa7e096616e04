"""Environment secrets end to end: real jobs in real subprocesses, the REST API over loopback,
webhooks delivered to a real receiver, on SQLite and PostgreSQL.

A job gets an environment's secrets only when its stage deploys there and has passed its gate;
whatever the jobs print or output, neither a value nor its base64 forms can be found in the
database (every table), the work directory, the REST answers, the events or the webhooks."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Awaitable, Callable
from pathlib import Path

import sqlalchemy as sa

from storage.secrets import generate_key
from tests.api.conftest import StartApi
from tests.webhooks.conftest import Receiver, drain, subscribe

KEY = generate_key()
PRODUCTION = "pr0d-Key/with+chars=7Xq"
STAGING = "st4ging-Key-Value-99"

#: what a deploy job does with $DEPLOY_KEY: prints it, and its base64, and outputs it
SHOW = """
        run: |
          echo "key=$DEPLOY_KEY"
          printf %s "$DEPLOY_KEY" | base64
          echo "$DEPLOY_KEY" | base64
          printf '%s\\n' "$DEPLOY_KEY" >&2
          echo "leak=$DEPLOY_KEY" >> "$SHIPYARD_OUTPUT"
          echo "sha=$(printf %s "$DEPLOY_KEY" | sha256sum | cut -c1-64)" >> "$SHIPYARD_OUTPUT"
"""
VAULT = f"""name: vault
stages:
  - name: build
    jobs:
      - name: compile
        run: 'echo "has=${{DEPLOY_KEY:+yes}}no" >> "$SHIPYARD_OUTPUT"'
  - name: staging
    environment: staging
    jobs:
      - name: deploy{SHOW}
  - name: production
    environment: production
    gate: {{type: automated, run: 'test -z "${{DEPLOY_KEY:-}}"', interval: 1s, timeout: 30s}}
    jobs:
      - name: deploy{SHOW}
"""


def forms(value: str) -> set[str]:
    """The value and every base64 form of it a job could print."""
    found = {value}
    for raw in (value, value + "\n"):
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            text = encode(raw.encode()).decode()
            found |= {text, text.rstrip("=")}
    return found


SECRETS = forms(PRODUCTION) | forms(STAGING)


def assert_clean(where: str, text: str) -> None:
    leaked = sorted(form for form in SECRETS if form in text)
    assert not leaked, f"{where} gives a secret away: {leaked}"


def dump_database(url: str) -> str:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            parts = []
            for table in sa.inspect(conn).get_table_names():
                rows = conn.execute(sa.text(f'SELECT * FROM "{table}"')).all()
                parts.append(f"{table}: {[tuple(row) for row in rows]!r}")
            return "\n".join(parts)
    finally:
        engine.dispose()


def dump_files(root: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in root.rglob("*") if p.is_file())


async def test_secrets_reach_only_admitted_deploy_jobs_and_are_masked_everywhere(
    db_url: str,
    start_api: StartApi,
    receivers: Callable[[], Awaitable[Receiver]],
    tmp_path: Path,
) -> None:
    api = await start_api(
        db_url, {"vault": VAULT}, secret_key=KEY, webhook_allow=["127.0.0.1"], webhook_deliver=False
    )
    for env, value in (("production", PRODUCTION), ("staging", STAGING)):
        made = await api.call("PUT", f"/environments/{env}/secrets/DEPLOY_KEY", json={"value": value})
        assert made.status == 201, made.text
        assert_clean("the answer to PUT", made.text)
    receiver = await receivers()
    await subscribe(api, receiver, ["run.started", "stage.finished", "deployment.finished", "run.finished"])

    run = await api.trigger("vault")
    done = await api.wait(run["id"], timeout=30)
    assert done["status"] == "succeeded", done  # (the gate check saw no secret: it passed)
    outputs = {f"{s['name']}/{j['name']}": j["outputs"] for s in done["stages"] for j in s["jobs"]}
    assert outputs["build/compile"] == {"has": "no"}
    assert outputs["staging/deploy"]["sha"] == hashlib.sha256(STAGING.encode()).hexdigest()
    assert outputs["production/deploy"]["sha"] == hashlib.sha256(PRODUCTION.encode()).hexdigest()
    assert outputs["production/deploy"]["leak"] == "***"

    log = await api.get(f"/runs/{run['id']}/jobs/production%2Fdeploy/log")
    assert log.status == 200, log.text
    assert "key=***" in log.text
    answers = {
        "the log": log.text,
        "the staging log": (await api.get(f"/runs/{run['id']}/jobs/staging%2Fdeploy/log")).text,
        "the run": (await api.get(f"/runs/{run['id']}")).text,
        "the runs": (await api.get("/runs")).text,
        "the events": (await api.stream(f"/runs/{run['id']}/events")).text,
        "the secrets list": (await api.get("/environments/production/secrets", "admin")).text,
    }
    for where, text in answers.items():
        assert_clean(where, text)
    assert answers["the log"].count("***") >= 4  # the value, its two base64 forms, stderr

    await drain(api)
    delivered = await receiver.wait_for(6)
    assert {r.type for r in delivered} >= {"deployment.finished", "run.finished"}
    for received in delivered:
        assert_clean(f"webhook {received.type}", str(received.payload))

    listed = await api.get("/environments/production/secrets", "admin")
    assert [item["name"] for item in listed.json["items"]] == ["DEPLOY_KEY"]
    assert set(listed.json["items"][0]) == {"environment", "name", "updated_at", "updated_by"}

    await api.shipyard.stop()  # (every write landed)
    assert_clean("the database", dump_database(db_url))
    assert_clean("the work directory", dump_files(tmp_path / "work"))
    audit = dump_database(db_url).split("audit_log: ", 1)[-1]
    assert "secret_set" in audit and "DEPLOY_KEY" in audit
