"""The secrets endpoints over real HTTP: admins only, values write-only, refusals that never
quote a value; and what a job gets without a key, or with the wrong one."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import sqlalchemy as sa

from core.access import Role
from core.commands import CompleteJob
from core.runtime.http_link import HttpLink
from storage.directory import Directory
from storage.secrets import SecretBox, SecretStore, generate_key
from storage.store import SqlStore
from tests.api.conftest import Api, StartApi, assert_problem
from tests.pipelines import one_deploy

KEY = generate_key()
VALUE = "s3cret-Value-123"
#: a production deploy that says whether it got $DEPLOY_KEY
SAYS = one_deploy("says", """'echo "got=${DEPLOY_KEY:+yes}" >> "$SHIPYARD_OUTPUT"'""")
PATH = "/environments/production/secrets"


async def test_admins_set_list_and_delete_secrets_and_never_see_a_value(
    db_url: str, start_api: StartApi
) -> None:
    api = await start_api(db_url, secret_key=KEY)
    made = await api.call("PUT", f"{PATH}/DEPLOY_KEY", json={"value": VALUE})
    assert made.status == 201 and made.headers["Location"] == f"/api/v1{PATH}"
    assert made.json["name"] == "DEPLOY_KEY" and made.json["updated_by"] == "admin"
    again = await api.call("PUT", f"{PATH}/DEPLOY_KEY", json={"value": VALUE + "x"})
    assert again.status == 200
    assert VALUE not in made.text + again.text

    for who in ("viewer", "deployer", "approver"):
        assert_problem(await api.get(PATH, who), 403)
        assert_problem(await api.call("PUT", f"{PATH}/OTHER", who, json={"value": VALUE}), 403)
    listed = await api.get(PATH, "admin")
    assert [i["name"] for i in listed.json["items"]] == ["DEPLOY_KEY"] and VALUE not in listed.text
    assert (await api.get("/environments/staging/secrets", "admin")).json["items"] == []

    short = assert_problem(
        await api.call("PUT", f"{PATH}/SHORT", json={"value": "ab"}), 422, "value", "at least 4"
    )
    assert "ab" not in short["detail"].replace("able", "")
    assert_problem(await api.call("PUT", f"{PATH}/lower", json={"value": VALUE}), 422, "secret name")
    assert_problem(await api.call("PUT", f"{PATH}/SHIPYARD_X", json={"value": VALUE}), 422, "reserved")
    assert_problem(await api.call("PUT", f"{PATH}/X1", json={"value": 5}), 422)
    for escaped in ("\\u0000", "\\ud800"):  # (read as U+FFFD elsewhere: here another value)
        raw = f'{{"value": "{VALUE}{escaped}"}}'
        sent = await api.call("PUT", f"{PATH}/X2", data=raw, headers={"Content-Type": "application/json"})
        assert_problem(sent, 422, "X2", "NUL character or an unpaired surrogate")

    gone = await api.call("DELETE", f"{PATH}/DEPLOY_KEY")
    assert gone.status == 200 and gone.json["name"] == "DEPLOY_KEY"
    assert_problem(await api.call("DELETE", f"{PATH}/DEPLOY_KEY"), 404, "no secret DEPLOY_KEY")

    audit = await api.get("/audit?limit=50", "admin")
    actions = [(e["action"], e["target"]) for e in audit.json["items"]]
    assert ("secret_set", f"{PATH}/DEPLOY_KEY") in actions
    assert ("secret_delete", f"{PATH}/DEPLOY_KEY") in actions
    assert VALUE not in audit.text


def _stored(url: str, key: str) -> None:
    """DEPLOY_KEY of production, stored under ``key`` (as another server did)."""
    store = SqlStore(url)
    try:
        SecretStore(store, SecretBox(key)).set(
            "production", "DEPLOY_KEY", VALUE, "ops", datetime.now(UTC), "cli"
        )
    finally:
        store.dispose()


async def test_without_a_key_secrets_are_refused_and_jobs_run_without_them(
    sqlite_url: str, start_api: StartApi
) -> None:
    _stored(sqlite_url, KEY)
    api = await start_api(sqlite_url, {"says": SAYS})
    assert_problem(await api.call("PUT", f"{PATH}/OTHER", json={"value": VALUE}), 409, "SHIPYARD_SECRET_KEY")
    run = await api.wait((await api.trigger("says"))["id"])
    assert run["status"] == "succeeded", run
    assert run["stages"][0]["jobs"][0]["outputs"] == {"got": ""}
    log = await api.get(f"/runs/{run['id']}/jobs/production%2Fdeploy/log")
    assert "not given to this job: SHIPYARD_SECRET_KEY is not set" in log.text


async def test_a_wrong_key_fails_the_job_clearly_without_running_it(
    sqlite_url: str, start_api: StartApi
) -> None:
    _stored(sqlite_url, KEY)
    api = await start_api(sqlite_url, {"says": SAYS}, secret_key=generate_key())
    run = await api.wait((await api.trigger("says"))["id"])
    assert run["status"] == "failed", run
    job = run["stages"][0]["jobs"][0]
    assert job["outputs"] == {} and "does not decrypt secret DEPLOY_KEY of production" in str(job)
    log = await api.get(f"/runs/{run['id']}/jobs/production%2Fdeploy/log")
    assert "this job was not started" in log.text and "Traceback" not in log.text
    engine = sa.create_engine(sqlite_url)
    with engine.connect() as conn:
        assert VALUE not in str(conn.execute(sa.text("SELECT * FROM environment_secret")).all())
    engine.dispose()


async def test_a_stored_value_that_is_not_utf8_fails_the_job_and_the_claim_still_answers(
    sqlite_url: str, start_api: StartApi
) -> None:
    """A value stored before such values were refused (bytes read from stdin as surrogates)
    cannot be sent to a runner as JSON: the job fails saying which secret, instead of a claim
    answered 500 while the attempt it took waits for its lease to run out."""
    token = SecretBox(KEY).seal("production", "DEPLOY_KEY", "abc\udcffdef")
    engine = sa.create_engine(sqlite_url)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO environment_secret (environment, name, ciphertext, updated_at, updated_by) "
                "VALUES ('production', 'DEPLOY_KEY', :token, :at, 'ops')"
            ),
            {"token": token, "at": datetime.now(UTC)},
        )
    engine.dispose()
    api = await start_api(sqlite_url, {"says": SAYS}, secret_key=KEY, runner_capacity=0)
    link = HttpLink(_url(api), await api.db(_runner_token, api, "eu-1"), "eu-1", claim_wait_s=0.5)
    try:
        run = await api.trigger("says")
        (claimed,) = await link.claim("eu-1", 1, 30)
    finally:
        await link.close()
    assert "DEPLOY_KEY" not in claimed.env and claimed.masked == ()
    assert claimed.run_id == run["id"]
    assert claimed.refusal == "secrets DEPLOY_KEY of production are not UTF-8 text: set them again"


async def test_a_report_a_runner_did_not_mask_is_masked_by_the_server(
    db_url: str, start_api: StartApi
) -> None:
    """A runner that restarted reports a finished job from its records, without the values it was
    given (they were only in the old process' memory): the server masks the environment's
    secrets in the outputs' names and values and in the detail before anything is stored."""
    _stored(db_url, KEY)
    api = await start_api(db_url, {"says": SAYS}, secret_key=KEY, runner_capacity=0)
    link = HttpLink(_url(api), await api.db(_runner_token, api, "eu-1"), "eu-1", claim_wait_s=0.5)
    try:
        run = await api.trigger("says")
        (claimed,) = await link.claim("eu-1", 1, 30)
        assert claimed.env["DEPLOY_KEY"] == VALUE  # (so the job could leak it)
        encoded = base64.b64encode(VALUE.encode()).decode()
        report = CompleteJob(
            run_id=run["id"],
            job_id=claimed.job_id,
            attempt=claimed.attempt,
            runner="eu-1",
            outcome="succeeded",
            exit_code=0,
            outputs={"key": VALUE, f"k{VALUE}": "x", "b64": encoded},
            detail=f"reported after its server restarted; last line {VALUE}",
        )
        assert (await link.report(report)).accepted
    finally:
        await link.close()
    done = await api.wait(run["id"])
    (job,) = done["stages"][0]["jobs"]
    assert job["outputs"] == {"key": "***", "k***": "x", "b64": "***"}
    assert done["status"] == "succeeded"
    dumped = await api.db(_every_row, api)
    assert VALUE not in dumped and encoded not in dumped


def _runner_token(api: Api, name: str) -> str:
    return Directory(api.store).create_token(name, [Role.RUNNER], datetime.now(UTC), by="tests")


def _url(api: Api) -> str:
    return str(api.client.make_url("/")).rstrip("/")


def _every_row(api: Api) -> str:
    """Every row of every table, as text."""
    with api.store.engine.connect() as conn:
        tables = sa.inspect(conn).get_table_names()
        return "\n".join(
            str(tuple(row)) for t in tables for row in conn.execute(sa.text(f'SELECT * FROM "{t}"'))
        )
