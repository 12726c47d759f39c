"""Slack and webhook notifiers against a real HTTP server on loopback (429/500 then success)."""

from __future__ import annotations

import html
import json
import threading
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from alerts.config import ConfigError, RetrySettings, parse_config
from alerts.delivery import send_with_retry
from alerts.message import notify_test_message, render
from alerts.notifiers import WebhookNotifier, build_routes
from alerts.notifiers.slack import SlackNotifier
from storage.entities import Alert, Run

FAST = RetrySettings(max_attempts=4, initial_backoff_s=0.01, max_backoff_s=0.05, timeout_s=5)


class Recorder:
    """A loopback HTTP server that answers with scripted statuses and records every request."""

    def __init__(self, statuses: list[int], headers: dict | None = None):
        self.statuses = list(statuses)
        self.headers = headers or {}
        self.requests: list[dict] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                recorder.requests.append(
                    {"path": self.path, "body": body.decode(), "type": self.headers["Content-Type"]}
                )
                status = recorder.statuses.pop(0) if recorder.statuses else 200
                self.send_response(status)
                for k, v in recorder.headers.items():
                    if status == 429:
                        self.send_header(k, v)
                self.end_headers()
                self.wfile.write(b"ok" if status == 200 else b"rate_limited")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/services/T000/B000/SECRET"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def http_server():
    servers = []

    def start(statuses, headers=None):
        server = Recorder(statuses, headers)
        servers.append(server)
        return server

    yield start
    for s in servers:
        s.close()


def alert_message(
    event: str = "firing", severity: str = "warning", loss: float = 2.71, score: float = 0.8
):
    run = Run(7, "uid7", "team", "gpt-lr3e-3", "running", datetime(2025, 1, 1))
    alert = Alert(
        id=1,
        run_id=7,
        predictor="sa_collapse",
        layer="blocks.1.mlp.fc",
        fingerprint="7/sa_collapse/blocks.1.mlp.fc",
        severity=severity,
        state="firing",
        first_step=240,
        last_step=260,
        created_at=datetime(2025, 1, 1),
        updated_at=datetime(2025, 1, 1),
        score=score,
        message="SA signs of blocks.1.mlp.fc collapsed: imbalance 0.91 against its normal 0.12",
        details={"loss": loss},
        fired_step=260,
        resolved_step=300 if event == "resolved" else None,
    )
    return render(event, [alert], run, "https://dash.example.com")


def test_a_resolved_message_says_the_loss_is_from_when_it_fired():
    message = alert_message("resolved")
    assert "step: 300 (fired at step 260)   loss when it fired: 2.71" in message.text
    assert "step 300 (fired at step 260), loss when it fired 2.71" in message.html
    assert message.payload["step"] == 300 and message.payload["fired_step"] == 260
    assert "step: 260   loss: 2.71" in alert_message().text


def test_webhook_retries_429_and_500_then_succeeds(http_server):
    server = http_server([429, 500, 200], {"Retry-After": "0"})
    sleeps: list[float] = []
    attempts, error = send_with_retry(
        WebhookNotifier(server.url), alert_message(), FAST, sleep=sleeps.append
    )
    assert (attempts, error) == (3, None)
    assert len(server.requests) == 3 and len(sleeps) == 2
    body = json.loads(server.requests[-1]["body"])
    assert server.requests[-1]["type"] == "application/json"
    assert body["event"] == "firing" and body["predictor"] == "sa_collapse"
    assert body["run"] == "gpt-lr3e-3" and body["step"] == 260 and body["loss"] == 2.71
    assert body["layers"] == ["blocks.1.mlp.fc"]
    assert body["link"] == "https://dash.example.com/run?run=uid7&step=260&layer=blocks.1.mlp.fc"


def test_webhook_payload_writes_non_finite_numbers_as_strings_like_the_command_line(http_server):
    server = http_server([200])
    message = alert_message(loss=float("nan"), score=float("inf"))
    assert send_with_retry(WebhookNotifier(server.url), message, FAST) == (1, None)
    body = json.loads(server.requests[-1]["body"])
    assert body["loss"] == "nan" and body["score"] == "inf"  # not null: null means "none"


def test_webhook_does_not_retry_a_client_error_and_hides_the_secret(http_server):
    server = http_server([404])
    attempts, error = send_with_retry(WebhookNotifier(server.url), alert_message(), FAST)
    assert attempts == 1 and error is not None and not error.recoverable
    assert "HTTP 404" in str(error) and "SECRET" not in str(error)
    assert "SECRET" not in repr(WebhookNotifier(server.url))


def test_webhook_gives_up_after_max_attempts(http_server):
    server = http_server([500] * 10)
    attempts, error = send_with_retry(WebhookNotifier(server.url), alert_message(), FAST)
    assert attempts == 4 and error.recoverable and len(server.requests) == 4


def test_unreachable_webhook_is_recoverable():
    notifier = WebhookNotifier("http://127.0.0.1:9/hook", timeout_s=1)
    attempts, error = send_with_retry(notifier, notify_test_message(None), FAST)
    assert attempts == 4 and error.recoverable


def test_slack_posts_blocks_and_retries(http_server):
    server = http_server([429, 200], {"Retry-After": "0"})
    attempts, error = send_with_retry(SlackNotifier(server.url), alert_message(), FAST)
    assert (attempts, error) == (2, None)
    payload = json.loads(server.requests[-1]["body"])
    assert payload["text"] == "[tripwire] FIRING warning: sa_collapse on run team/gpt-lr3e-3"
    block = html.unescape(payload["blocks"][0]["text"]["text"])  # Slack decodes &amp; &lt; &gt;
    assert "blocks.1.mlp.fc" in block and "step: 260" in block and "loss: 2.71" in block
    assert "https://dash.example.com/run?run=uid7&step=260&layer=blocks.1.mlp.fc" in block


@pytest.mark.parametrize(
    "event, emoji",
    [
        ("firing", ":rotating_light:"),
        ("repeat", ":rotating_light:"),
        ("resolved", ":white_check_mark:"),
    ],
)
def test_slack_says_a_resolution_calmly(http_server, event, emoji):
    server = http_server([])
    attempts, error = send_with_retry(
        SlackNotifier(server.url), alert_message(event, severity="critical"), FAST
    )
    assert (attempts, error) == (1, None)
    block = json.loads(server.requests[-1]["body"])["blocks"][0]["text"]["text"]
    assert block.startswith(f"{emoji} *[tripwire] ")


def test_retry_after_is_honoured_up_to_the_cap(http_server):
    server = http_server([429, 200], {"Retry-After": "120"})
    sleeps: list[float] = []
    send_with_retry(
        WebhookNotifier(server.url), notify_test_message(None), FAST, sleep=sleeps.append
    )
    assert sleeps == [FAST.max_backoff_s]


def test_routes_from_environment_only(http_server):
    server = http_server([])
    env = {"TRIPWIRE_SLACK_WEBHOOK_URL": server.url, "TRIPWIRE_WEBHOOK_URL": server.url}
    routes = build_routes(parse_config({}), env)
    assert [r.notifier.name for r in routes] == ["log", "slack", "webhook"]
    assert all("SECRET" not in repr(r.notifier) for r in routes)


@pytest.mark.parametrize(
    "url",
    ["http://hooks.example.com/x", "ftp://127.0.0.1/x", "not a url"],
)
def test_plain_http_only_to_loopback(url):
    with pytest.raises(ConfigError) as err:
        build_routes(parse_config({}), {"TRIPWIRE_WEBHOOK_URL": url})
    assert "TRIPWIRE_WEBHOOK_URL" in str(err.value) and url not in str(err.value)


def test_a_url_ending_in_a_newline_is_used_without_it(http_server):
    # A secret mounted from a file (Kubernetes, Docker secrets) often ends in a newline.
    server = http_server([200, 200])
    env = {
        "TRIPWIRE_WEBHOOK_URL": server.url + "\n",
        "TRIPWIRE_SLACK_WEBHOOK_URL": server.url + " ",
    }
    for route in build_routes(parse_config({}), env)[1:]:
        assert send_with_retry(route.notifier, notify_test_message(None), FAST) == (1, None)
    assert [r["path"] for r in server.requests] == ["/services/T000/B000/SECRET"] * 2
