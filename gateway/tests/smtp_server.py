#!/usr/bin/env python3
"""A real SMTP server for the e-mail notification tests (gateway/tests/notify.rs), on aiosmtpd.

It listens on 127.0.0.1 (a free port, printed as `READY <port>` on stdout), REQUIRES STARTTLS
with the certificate the test generated, requires AUTH (PLAIN or LOGIN) with the given user and
password after TLS, and writes each message it accepts to `--out` as `NNNN.eml` (renamed into
place, so a reader never sees half a file): three header lines telling what the server saw
(`X-Envelope-To`, `X-Tls`, `X-Auth-User`), the message's headers as received, a blank line,
and the text body decoded (from quoted-printable or base64) as UTF-8.
Recipients whose local part starts with `refused` get `550`, with `busy` get `451`.
With `--plain` it offers no STARTTLS at all (a server the gateway must refuse to send to).
It exits when its stdin closes (the test that started it went away).

Needs aiosmtpd: run scripts/install-test-deps.sh (Debian's python3-aiosmtpd).
"""

import argparse
import asyncio
import email
import email.policy
import logging
import os
import ssl
import sys
import warnings

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword


class Handler:
    def __init__(self, out):
        self.out = out
        self.count = 0

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        local = address.split("@", 1)[0]
        if local.startswith("refused"):
            return "550 5.1.1 <%s>: mailbox unavailable" % address
        if local.startswith("busy"):
            return "451 4.3.0 mailbox busy, try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        self.count += 1
        name = "%04d.eml" % self.count
        tmp = os.path.join(self.out, "." + name + ".tmp")
        head = "X-Envelope-To: %s\r\nX-Tls: %s\r\nX-Auth-User: %s\r\n" % (
            ", ".join(envelope.rcpt_tos),
            session.ssl is not None,
            getattr(session, "auth_data", None) and session.auth_data.login.decode(),
        )
        raw = envelope.original_content or envelope.content
        headers = raw.split(b"\r\n\r\n", 1)[0]
        text = email.message_from_bytes(raw, policy=email.policy.default).get_content()
        with open(tmp, "wb") as f:
            f.write(head.encode())
            f.write(headers)
            f.write(b"\r\n\r\n")
            f.write(text.encode("utf-8"))
        os.rename(tmp, os.path.join(self.out, name))
        return "250 2.0.0 queued as %d" % self.count


def authenticator(user, password):
    def check(server, session, envelope, mechanism, auth_data):
        ok = (
            isinstance(auth_data, LoginPassword)
            and auth_data.login.decode() == user
            and auth_data.password.decode() == password
        )
        return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)

    return check


async def main():
    # Refused handshakes (a test's untrusted client) are expected: no tracebacks; aiosmtpd 1.4
    # warns about its own use of a deprecated attribute at each AUTH.
    logging.getLogger("mail.log").setLevel(logging.CRITICAL)
    warnings.simplefilter("ignore", DeprecationWarning)
    p = argparse.ArgumentParser()
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--user", required=True)
    p.add_argument("--password", required=True)
    p.add_argument(
        "--plain",
        action="store_true",
        help="offer no STARTTLS (and take AUTH in the clear): a server a client must refuse",
    )
    a = p.parse_args()

    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(a.cert, a.key)
    handler = Handler(a.out)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(
            handler,
            hostname="localhost",
            tls_context=None if a.plain else tls,
            require_starttls=not a.plain,
            authenticator=authenticator(a.user, a.password),
            auth_required=True,
            auth_require_tls=not a.plain,
        ),
        host="127.0.0.1",
        port=0,
    )
    port = server.sockets[0].getsockname()[1]
    print("READY %d" % port, flush=True)
    await loop.run_in_executor(None, sys.stdin.read)
    server.close()


if __name__ == "__main__":
    asyncio.run(main())
