"""The HTTP API of a real lab's nodes, from this machine as a script or a browser reaches it
(HTTPS through the lab's console relay): nothing answers without credentials but the health
check, wrong passwords are slowed down, a session's commands need its CSRF token, a read-only
token sees but cannot act, every command and refusal is the CLI's, a command given to either
node reaches the node that must act, logs are paged and followed, /metrics parses, a snapshot
holds no secret, forged or replayed node-to-node requests are refused, and requests made from
the OpenAPI document with arbitrary values never break the server."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from tandem.engine.api import forward
from tandem.engine.api.openapi import document
from tests.helpers.api import Client, console_password, lab_client
from tests.helpers.lab import LabCluster, failover_lab_of_its_own
from tests.helpers.mountproc import wait_for

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def lab() -> Iterator[LabCluster]:
    with failover_lab_of_its_own("tandem-api-") as cluster:
        yield cluster
        for node in ("a", "b"):
            assert "Traceback" not in cluster.log(node), cluster.log(node)


def _states(client: Client) -> dict[str, str]:
    nodes = client.get("/api/v1/cluster").json()["nodes"]
    return {name: found["modules"]["demo"]["failover"]["state"] for name, found in nodes.items()}


def _serving_first(lab: LabCluster) -> tuple[str, str]:
    states = _states(lab_client(lab, "a"))
    serving = next(node for node, state in states.items() if state == "PRIM")
    return serving, "b" if serving == "a" else "a"


def _settled(client: Client) -> None:
    wait_for(lambda: sorted(_states(client).values()) == ["PRIM", "SECOND"], 60, "PRIM and SECOND")
    # the secondary in sync again, or the next swap is refused for want of an up-to-date peer
    wait_for(
        lambda: all(
            s["replication"] == "in sync"
            for found in client.get("/api/v1/cluster").json()["nodes"].values()
            for s in found["modules"]["demo"]["streams"]
        ),
        60,
        "both copies in sync",
    )
    # and the serving node has heard so (a heartbeat later): a swap is decided on its word
    wait_for(
        lambda: any(
            m["failover"]["serving"] and m["failover"]["peer"]["up_to_date"]
            for found in client.get("/api/v1/cluster").json()["nodes"].values()
            for m in [found["modules"]["demo"]]
        ),
        60,
        "the serving node to know its peer up to date",
    )


def test_nothing_answers_without_credentials_but_the_health_check(lab: LabCluster) -> None:
    anonymous = lab_client(lab, "a", logged_in=False)
    health = anonymous.get("/api/v1/health")
    assert health.status == 200 and health.json() == {"status": "ok", "node": "a"}
    page = anonymous.get("/console/")
    assert page.status == 200 and b"console.js" in page.body  # the page: no data in it
    assert "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]
    for path, methods in document()["paths"].items():
        target = path.replace("{module}", "demo")
        for method in methods:
            if target in ("/api/v1/health",) or (target, method) == ("/api/v1/session", "post"):
                continue
            answer = anonymous.request(method.upper(), target, {} if method == "post" else None)
            assert answer.status == 401, (method, target, answer.status, answer.body)
            assert b"demo" not in answer.body and b"PRIM" not in answer.body
    wrong = Client(anonymous.base, token="tdm_0123456789ab_not-a-real-token")
    assert wrong.get("/api/v1/state").status == 401
    assert wrong.get("/metrics").status == 401


def test_wrong_passwords_are_slowed_and_a_session_needs_its_csrf_token(lab: LabCluster) -> None:
    client = lab_client(lab, "b", logged_in=False)
    for _ in range(3):
        assert client.login("admin", "not the password").status == 401
    refused = client.login("admin", console_password(lab))
    assert refused.status == 429  # even the right password waits: the guesser learns nothing
    delay = int(refused.headers["Retry-After"])
    assert 1 <= delay <= 2
    time.sleep(delay + 0.2)
    answer = client.login("admin", console_password(lab))
    assert answer.status == 200
    cookie = answer.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "Secure" in cookie and "SameSite=strict" in cookie
    assert answer.json()["role"] == "admin"
    token = client.csrf
    client.csrf = None
    assert client.post("/api/v1/modules/demo/start").status == 403
    client.csrf = "forged"
    assert client.post("/api/v1/modules/demo/start").status == 403
    client.csrf = token
    assert client.post("/api/v1/modules/demo/start").status == 409  # heard: already started
    assert client.request("DELETE", "/api/v1/session").status == 200
    assert client.get("/api/v1/state").status == 401  # the session ended with the logout


def test_a_read_only_token_sees_but_cannot_act(lab: LabCluster) -> None:
    made = lab.exec("a", "tandem", "console", "token", "viewer", "--role", "read-only")
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    assert token.startswith("tdm_") and token not in made.stderr
    viewer = Client(lab_client(lab, "a", logged_in=False).base, token=token)
    assert viewer.get("/api/v1/state").status == 200
    assert viewer.get("/metrics").status == 200
    for refused in (viewer.post("/api/v1/modules/demo/swap"), viewer.get("/api/v1/snapshot")):
        assert refused.status == 403 and "read-only" in refused.json()["error"]
    listed = lab.exec("a", "tandem", "console", "users")
    assert "token viewer (read-only)" in listed.stdout and token not in listed.stdout
    assert lab.exec("a", "tandem", "console", "token", "viewer", "--revoke").returncode == 0
    assert viewer.get("/api/v1/state").status == 401  # at once, without a restart


def test_the_state_is_the_document_tandem_state_json_prints(lab: LabCluster) -> None:
    api = lab_client(lab, "a").get("/api/v1/state").json()
    printed = json.loads(lab.exec("a", "tandem", "state", "--json").stdout)
    assert api.keys() == printed.keys() and api["version"] == printed["version"] == 1
    for module, found in printed["modules"].items():
        mine = api["modules"][module]
        assert mine["failover"].keys() == found["failover"].keys()
        assert mine["failover"]["state"] == found["failover"]["state"]
        assert [s.keys() for s in mine["streams"]] == [s.keys() for s in found["streams"]]
    asked_of_b = lab_client(lab, "b").get("/api/v1/state?node=a").json()
    assert asked_of_b["modules"]["demo"]["failover"]["node"] == "a"  # forwarded to a


def test_every_command_and_refusal_through_either_node(lab: LabCluster) -> None:
    client = lab_client(lab, "b")
    _settled(client)
    serving, following = _serving_first(lab)
    # the refusals are the CLI's, word for word
    cli = lab.exec(serving, "tandem", "start", "demo")
    api = client.post("/api/v1/modules/demo/start", {"node": serving})
    assert api.status == 409 and cli.returncode != 0
    assert api.json()["error"] in cli.stderr
    prim = client.post("/api/v1/modules/demo/prim", {"node": following})
    assert prim.status == 409 and "the peer serves" in prim.json()["error"]
    # a swap asked of the node that follows is carried out by the node that serves
    swapped = lab_client(lab, following).post("/api/v1/modules/demo/swap")
    assert swapped.status == 200, swapped.body
    assert swapped.json()["node"] == serving and swapped.json()["failover"]["state"] == "SECOND"
    wait_for(lambda: _states(client)[following] == "PRIM", 60, "the swap")
    _settled(client)
    # stop and start the follower through the other node's API
    stopped = lab_client(lab, following).post("/api/v1/modules/demo/stop", {"node": serving})
    assert stopped.status == 200 and stopped.json()["failover"]["state"] == "STOP"
    assert client.post("/api/v1/modules/demo/start", {"node": serving}).status == 200
    _settled(client)
    restarted = client.post("/api/v1/modules/demo/restart", {"node": serving})
    assert restarted.status == 200, restarted.body
    _settled(client)
    second = client.post("/api/v1/modules/demo/second", {"node": following})
    assert second.status == 200, second.body
    wait_for(lambda: _states(client)[serving] == "PRIM", 60, "the step down")
    _settled(client)
    # bad input: one clear line each, nothing done
    for target, body, status in [
        ("/api/v1/modules/demo/reboot", {}, 404),
        ("/api/v1/modules/nosuch/stop", {}, 404),
        ("/api/v1/modules/demo/stop", {"node": "z"}, 404),
        ("/api/v1/modules/demo/prim", {"force": "yes"}, 400),
        ("/api/v1/modules/demo/stop", [], 400),
        ("/api/v1/modules/bad%20name/stop", {}, 404),
    ]:
        answer = client.post(target, body)
        assert answer.status == status, (target, body, answer.body)
        assert isinstance(answer.json()["error"], str)
    assert client.post("/api/v1/modules/demo/stop", raw=b"{not json").status == 400
    assert client.post("/api/v1/modules/demo/stop", raw=b" " * (65 << 10)).status == 413
    assert sorted(_states(client).values()) == ["PRIM", "SECOND"]  # none of it acted


def test_tandem_swap_on_the_following_node_is_carried_out_by_the_serving_one(
    lab: LabCluster,
) -> None:
    client = lab_client(lab, "a")
    _settled(client)
    serving, following = _serving_first(lab)
    done = lab.exec(following, "tandem", "swap", "demo")
    assert done.returncode == 0, done.stderr
    assert f"swapped on {serving}, which served" in done.stdout
    wait_for(lambda: _states(client)[following] == "PRIM", 60, "the swap")
    _settled(client)


def test_logs_are_paged_and_followed(lab: LabCluster) -> None:
    client = lab_client(lab, "a")
    _settled(client)
    serving, following = _serving_first(lab)
    page = client.get(f"/api/v1/modules/demo/log?node={following}&lines=5").json()
    assert len(page["lines"]) == 5 and page["node"] == following
    followed: list[dict[str, Any]] = []

    def follow() -> None:
        target = f"/api/v1/modules/demo/log?node={following}&after={page['next']}&wait=20"
        followed.append(client.get(target).json())

    waiting = threading.Thread(target=follow)
    waiting.start()
    time.sleep(1.0)
    assert not followed  # waiting for more
    assert client.post("/api/v1/modules/demo/restart", {"node": following}).status == 200
    waiting.join(30)
    assert followed and any("STOP" in line for line in followed[0]["lines"])
    assert followed[0]["next"] > page["next"]
    app = client.get(f"/api/v1/modules/demo/log?kind=app&node={serving}").json()
    assert isinstance(app["lines"], list)
    for bad in ("lines=-1", "lines=x", "kind=secret", "after=-5", "wait=99"):
        assert client.get(f"/api/v1/modules/demo/log?{bad}").status == 400, bad
    assert client.get("/api/v1/modules/nosuch/log").status == 404
    _settled(client)


def test_metrics_parse_and_say_who_serves(lab: LabCluster) -> None:
    client = lab_client(lab, "a")
    _settled(client)
    serving, _ = _serving_first(lab)
    for i in range(20):
        written = lab.exec(serving, "sh", "-c", f"echo {i} > {lab.path}/metric-{i}")
        assert written.returncode == 0, written.stderr
    text = lab_client(lab, serving).get("/metrics").body.decode()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples[("tandem_module_state", (("module", "demo"), ("state", "PRIM")))] == 1
    assert samples[("tandem_module_serving", (("module", "demo"), ("node", serving)))] == 1
    stream = (("module", "demo"), ("stream", "0"))
    assert samples[("tandem_ack_latency_seconds_count", stream)] >= 20
    assert samples[("tandem_stream_in_sync", stream)] == 1
    assert ("tandem_journal_bytes", stream) in samples
    assert ("tandem_heartbeat_silent_seconds", (("module", "demo"), ("network", "main"))) in samples


def test_a_snapshot_of_either_node_holds_its_logs_and_no_secret(lab: LabCluster) -> None:
    client = lab_client(lab, "a")
    secret = (lab.directory / "nodes" / "a" / "etc" / "secret").read_bytes().strip()
    for node in ("a", "b"):
        answer = client.get(f"/api/v1/snapshot?node={node}")
        assert answer.status == 200 and answer.headers["Content-Type"] == "application/zip"
        assert f"tandem-snapshot-{node}-" in answer.headers["Content-Disposition"]
        with zipfile.ZipFile(io.BytesIO(answer.body)) as archive:
            names = archive.namelist()
            everything = b"".join(archive.read(name) for name in names)
            state = json.loads(archive.read(next(n for n in names if n.endswith("/state.json"))))
        for wanted in ("state.json", "versions.txt", "failover-timeline.json", "demo/module.log"):
            assert any(name.endswith(wanted) for name in names), (wanted, names)
        assert any("config/modules/demo.toml" in name for name in names)
        assert not any(name.endswith("/secret") for name in names)
        assert secret not in everything and bytes.fromhex(secret.decode()) not in everything
        assert state["modules"]["demo"]["failover"]["node"] == node
    out = lab.directory / "nodes" / "b" / "support.zip"
    made = lab.exec("b", "tandem", "snapshot", "--node", "b", "--out", str(out))
    assert made.returncode == 0, made.stderr
    assert re.search(r"snapshot of node b written to .*support\.zip", made.stdout)
    with zipfile.ZipFile(out) as archive:
        assert secret not in b"".join(archive.read(n) for n in archive.namelist())


def test_a_forged_or_replayed_node_request_is_refused(lab: LabCluster) -> None:
    client = lab_client(lab, "a", logged_in=False)
    secret = (lab.directory / "nodes" / "a" / "etc" / "secret").read_bytes().strip()
    target = "/api/v1/state"
    forged = forward.sign(b"x" * 32, "GET", target, b"", time.time())
    assert client.get(target, headers={forward.HEADER: forged}).status == 401
    genuine = forward.sign(secret, "GET", target, b"", time.time())
    first = client.get(target, headers={forward.HEADER: genuine})
    assert first.status == 200 and first.headers[forward.HEADER] == "sealed"
    assert b"demo" not in first.body  # sealed: not readable without the secret
    assert json.loads(forward.open_answer(secret, genuine, first.body))["version"] == 1
    assert client.get(target, headers={forward.HEADER: genuine}).status == 401  # replayed
    late = forward.sign(secret, "GET", target, b"", time.time() - 300)
    assert client.get(target, headers={forward.HEADER: late}).status == 401


def test_schemathesis_finds_nothing_wrong_against_the_openapi_document(
    lab: LabCluster, tmp_path: Path
) -> None:
    """Schemathesis (a third-party schema fuzzer) with every check but ignored_auth (O1 is that
    check, done without the token schemathesis cannot take off): a read-only token, so its
    commands are refused and nothing acts; the answers must match the document."""
    made = lab.exec("a", "tandem", "console", "token", "schemathesis", "--role", "read-only")
    assert made.returncode == 0, made.stderr
    schema = tmp_path / "openapi.json"
    schema.write_text(json.dumps(document()))
    base = lab_client(lab, "a", logged_in=False).base.rstrip("/")
    done = subprocess.run(
        [
            str(Path(sys.executable).parent / "schemathesis"), "run", str(schema), "--url", base,
            "-H", f"Authorization: Bearer {made.stdout.strip()}", "--tls-verify", "false",
            "-n", "40", "--exclude-checks", "ignored_auth", "--no-color",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert re.search(r"\d+ generated, \d+ passed", done.stdout), done.stdout[-2000:]


_VALUES = st.one_of(
    st.integers(-(2**63), 2**63),
    st.text(max_size=40),
    st.booleans(),
    st.none(),
    st.sampled_from(["a", "b", "demo", "../../etc", "0", "%00", "module", "app"]),
)


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_requests_made_from_the_openapi_document_never_break_the_server(
    lab: LabCluster, data: st.DataObject
) -> None:
    """Any path, parameter and body the document allows (and some it does not): the answer is
    one the document lists, never a 5xx but a peer's 502, and always JSON where it says so."""
    client = _fuzz_client(lab)
    paths = document()["paths"]
    path = data.draw(st.sampled_from(sorted(paths)))
    method = data.draw(st.sampled_from(sorted(paths[path])))
    operation = paths[path][method]
    is_command = path.rsplit("/", 1)[-1] in ("start", "stop", "restart", "swap", "prim", "second")
    module = data.draw(st.sampled_from(["demo", "nosuch", "x" * 70, "-bad"]))
    target = path.replace("{module}", module)
    query = {
        p["name"]: data.draw(_VALUES)
        for p in operation.get("parameters", [])
        if p["in"] == "query" and data.draw(st.booleans())
    }
    if query:
        target += "?" + "&".join(f"{k}={'' if v is None else v}" for k, v in query.items())
    body = data.draw(
        st.one_of(st.none(), st.dictionaries(st.sampled_from(["node", "force", "x"]), _VALUES))
    )
    if is_command:
        body = {**(body or {}), "force": "not a boolean"}  # bad input: nothing really acts
    if path == "/api/v1/session" and method == "delete":
        return  # would end the session the other examples use
    if path == "/api/v1/session" and method == "post":
        return  # a login storm would lock the admin out for the tests after this one
    answer = client.request(method.upper(), _quoted(target), body)
    documented = set(operation["responses"]) | {"404"}
    assert str(answer.status) in documented, (method, target, body, answer.status, answer.body)
    assert answer.status < 500 or answer.status == 502, answer.body
    if answer.headers.get("Content-Type", "").startswith("application/json"):
        json.loads(answer.body)


_FUZZ: dict[str, Client] = {}


def _fuzz_client(lab: LabCluster) -> Client:
    if str(lab.directory) not in _FUZZ:
        _FUZZ.clear()
        _FUZZ[str(lab.directory)] = lab_client(lab, "a")
    return _FUZZ[str(lab.directory)]


def _quoted(target: str) -> str:
    from urllib.parse import quote

    return quote(target, safe="/?=&")
