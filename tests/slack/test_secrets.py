"""Environment secrets never reach Slack: a deploy started with ``/deploy run`` whose job prints
its secret, the secret's base64, outputs it and then fails (so its last lines are quoted in the
run's thread) leaves neither the value nor a base64 form in any Web API call or response_url
post Shipyard made."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime

from core.access import Role
from core.states import RunStatus
from storage.reads import Reads
from storage.secrets import SecretBox, SecretStore, generate_key
from storage.store import SqlStore
from tests.pipelines import one_deploy
from tests.slack.harness import ALICE, StartBot, until

KEY = generate_key()
VALUE = "sl4ck-Deploy-Key/42+x"
SCRIPT = "; ".join(
    [
        'echo "key=$DEPLOY_KEY"',
        'printf %s "$DEPLOY_KEY" | base64',
        'echo "leak=$DEPLOY_KEY" >> "$SHIPYARD_OUTPUT"',
        'echo "failed with $DEPLOY_KEY" >&2',
        "exit 3",
    ]
)
LEAKS = one_deploy("leaks", f"'{SCRIPT}'")


def _forms(value: str) -> list[str]:
    raw = [value.encode(), (value + "\n").encode()]
    return [value, *(base64.b64encode(r).decode().rstrip("=") for r in raw)]


async def test_a_failing_deploy_that_prints_its_secret_shows_none_of_it_in_slack(
    db_url: str, start_bot: StartBot
) -> None:
    store = SqlStore(db_url)
    SecretStore(store, SecretBox(KEY)).set("production", "DEPLOY_KEY", VALUE, "ops", datetime.now(UTC), "cli")
    store.dispose()
    bot = await start_bot({"leaks": LEAKS}, {ALICE: [Role.DEPLOYER]}, database_url=db_url, secret_key=KEY)

    await bot.command(ALICE, "run leaks")
    state = await until(lambda: Reads(bot.store).run("leaks#1"), 10, "the run")
    done = await bot.until_status(state.run.ref, RunStatus.FAILED, timeout=30)
    (job,) = done.jobs
    log = "".join(c.text for c in bot.store.read_log(job.id))
    assert "key=***" in log and "failed with ***" in log  # the job had the value, and printed it
    # the failure is told in the run's thread, quoting the job's last lines (masked)
    await until(
        lambda: any("failed with ***" in json.dumps(c.args) for c in bot.fake.calls_to("chat.postMessage")),
        10,
        "the failure's reply quoting the log",
    )

    said = [json.dumps(c.args) for c in bot.fake.calls] + [json.dumps(r.body) for r in bot.fake.responses]
    for form in _forms(VALUE):
        assert not [s for s in said if form in s], form
