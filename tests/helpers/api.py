"""A plain HTTP client for the node API as a script would use it: HTTPS (the node's
self-made certificate is not checked here), a cookie once logged in, the CSRF header."""

from __future__ import annotations

import http.client
import json
import ssl
import time
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import urlsplit

from tests.helpers.lab import LabCluster


@dataclass
class Answer:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Client:
    base: str  # https://127.0.0.1:9453/
    cookie: str | None = None
    csrf: str | None = None
    token: str | None = None
    extra: dict[str, str] = field(default_factory=dict)

    def request(
        self,
        method: str,
        target: str,
        body: Any = None,
        *,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 60,
    ) -> Answer:
        where = urlsplit(self.base)
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        connection = http.client.HTTPSConnection(
            where.hostname, where.port, timeout=timeout, context=context
        )
        sent = {"Content-Type": "application/json", **self.extra, **(headers or {})}
        if self.cookie:
            sent["Cookie"] = f"tandem_session={self.cookie}"
        if self.csrf:
            sent.setdefault("X-CSRF-Token", self.csrf)
        if self.token:
            sent["Authorization"] = f"Bearer {self.token}"
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        try:
            connection.request(method, target, body=data, headers=sent)
            response = connection.getresponse()
            return Answer(response.status, response.headers, response.read())
        finally:
            connection.close()

    def get(self, target: str, **kwargs: Any) -> Answer:
        return self.request("GET", target, **kwargs)

    def post(self, target: str, body: Any = None, **kwargs: Any) -> Answer:
        return self.request("POST", target, body if body is not None else {}, **kwargs)

    def login(self, user: str, password: str) -> Answer:
        answer = self.request("POST", "/api/v1/session", {"user": user, "password": password})
        if answer.status == 200:
            cookie = SimpleCookie(answer.headers["Set-Cookie"])
            self.cookie = cookie["tandem_session"].value
            self.csrf = answer.json()["csrf"]
        return answer


def console_password(lab: LabCluster) -> str:
    return (lab.directory / "console-password").read_text().strip()


def lab_client(lab: LabCluster, node: str, *, logged_in: bool = True) -> Client:
    ports = json.loads((lab.directory / "lab.json").read_text())["console_ports"]
    client = Client(f"https://127.0.0.1:{ports[node]}/")
    if logged_in:
        # A fuzzer before us (Schemathesis posts sessions with made-up passwords from this
        # same address) may have the address throttled: wait as a real client would.
        deadline = time.monotonic() + 330  # the longest wait is 5 minutes
        while (answer := client.login("admin", console_password(lab))).status == 429:
            assert time.monotonic() < deadline, "still throttled after the longest wait"
            time.sleep(int(answer.headers.get("Retry-After", "1")) + 0.2)
        assert answer.status == 200, answer.status
    return client
