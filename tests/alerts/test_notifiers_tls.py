"""Webhook and Slack over https against a real TLS server on loopback whose certificate is
self-signed: verification is on, and its failure is reported at once rather than retried."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from alerts.delivery import send_with_retry
from alerts.notifiers import WebhookNotifier
from alerts.notifiers.slack import SlackNotifier
from tests.alerts.test_notifiers_email import certificate  # noqa: F401 - a fixture
from tests.alerts.test_notifiers_http import FAST, alert_message


@pytest.fixture
def https_server(certificate):  # noqa: F811
    """An https server on 127.0.0.1 with the self-signed certificate; records each POST."""
    server_context, _client_context = certificate
    received: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            received.append(self.path)
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.socket = server_context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"https://127.0.0.1:{server.server_address[1]}/services/T000/B000/SECRET"
    yield url, received
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("notifier", [WebhookNotifier, SlackNotifier])
def test_an_untrusted_certificate_is_refused_at_once_and_said(https_server, notifier):
    url, received = https_server
    attempts, error = send_with_retry(notifier(url), alert_message(), FAST)
    assert received == []  # nothing was sent to a server that could not prove who it is
    assert error is not None and "certificate verify failed" in str(error)
    assert attempts == 1 and not error.recoverable  # only a change of settings fixes it
    assert "SECRET" not in str(error)
