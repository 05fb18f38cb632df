# -*- coding: utf-8 -*-
# Copyright: certline contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""certline's line protocol (protocol.md) over a plain TCP socket, for the certline modules.

Only the standard library is used (no Ansible either: module_support holds the Ansible
glue), so the modules run on any managed node with Python 3 and this file can be tested alone.
One connection carries every request of a module run: the protocol answers pipelined
requests in order, and each request is one line ending in LF.

Values are checked here before they are put on the wire. A value holding a space or a
newline would otherwise smuggle extra keys or a second request into the line; a key in the
wrong format would be echoed back by nobody, but is refused early with a clear message.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import hashlib
import os
import re
import socket

# protocol.md section 4: a reply is at most 1000 bytes; allow some slack for a future server.
MAX_REPLY_BYTES = 4096

# protocol.md section 6: 1-64 of [A-Za-z0-9-]; keys a client makes itself are 16-64.
API_KEY_RE = re.compile(r"^[A-Za-z0-9-]{1,64}$")
CLIENT_MADE_KEY_RE = re.compile(r"^[A-Za-z0-9-]{16,64}$")

# The status line: "status ok 200 TEXT" or "status error CODE TEXT".
STATUS_RE = re.compile(r"^status (ok|error) ([0-9]{3}) ?(.*)$")

# A `status` data field: name=token, or name="quoted" (dcv_value escapes \ and ").
FIELD_NAME_RE = re.compile(r"([A-Za-z0-9_]+)=")


class CertlineError(Exception):
    """The server answered `status error CODE TEXT`."""

    def __init__(self, code, text, request_name):
        super(CertlineError, self).__init__("%s %s" % (code, text))
        self.code = code
        self.text = text
        self.request_name = request_name


class CertlineUnreachable(Exception):
    """No reply: connection refused, timed out, or closed before a status line."""


class Reply(object):
    """One reply: the optional data line and the status line, split into its parts."""

    def __init__(self, data, ok, code, text):
        self.data = data
        self.ok = ok
        self.code = code
        self.text = text


def key_id(api_key):
    """The first 12 hex digits of the key's SHA-256: what certline's logs and admin API show."""
    return hashlib.sha256(api_key.encode("utf-8")).hexdigest()[:12]


def check_api_key(api_key):
    """Returns an error message when `api_key` is not in certline's key format, else None."""
    if not API_KEY_RE.match(api_key):
        return "the API key is not in certline's format (1-64 characters of A-Z a-z 0-9 -)"
    return None


def check_value(what, value):
    """Returns an error message when `value` cannot travel as one protocol value, else None.

    protocol.md section 3: a value is printable, without spaces or control characters.
    """
    if not value:
        return "%s is empty" % what
    for char in value:
        if char.isspace() or ord(char) < 0x20 or ord(char) == 0x7F:
            return "%s %r holds a space or a control character" % (what, value)
    if len(value.encode("utf-8")) > 900:
        return "%s is longer than a request line allows" % what
    return None


def read_api_key_file(path):
    """The key kept in `path` (its first line, whitespace removed).

    Raises ValueError with a message that says what to do.
    """
    try:
        with open(path, "r") as handle:
            key = handle.readline().strip()
    except (IOError, OSError) as exc:
        raise ValueError("cannot read api_key_file %s: %s" % (path, exc.strerror or exc))
    if not key:
        raise ValueError("api_key_file %s is empty" % path)
    problem = check_api_key(key)
    if problem:
        raise ValueError("api_key_file %s: %s" % (path, problem))
    return key


def parse_status_fields(data):
    """The `status` data line as a dict of strings (protocol.md section 7, `status`).

    Quoted values are unquoted: `dcv_value="..."` has `\\` and `"` escaped by a backslash;
    `error="..."` is always last and holds no `"`, so it runs to the line's final quote.
    """
    fields = {}
    pos = 0
    length = len(data)
    while pos < length:
        while pos < length and data[pos] == " ":
            pos += 1
        match = FIELD_NAME_RE.match(data, pos)
        if not match:
            raise ValueError("unexpected status data at %r" % data[pos:pos + 40])
        name = match.group(1)
        pos = match.end()
        if pos < length and data[pos] == '"':
            if name == "error":
                end = data.rfind('"')
                if end <= pos:
                    raise ValueError("unterminated quoted value for %s" % name)
                fields[name] = data[pos + 1:end]
                pos = end + 1
                continue
            value = []
            pos += 1
            while True:
                if pos >= length:
                    raise ValueError("unterminated quoted value for %s" % name)
                char = data[pos]
                if char == "\\" and pos + 1 < length:
                    value.append(data[pos + 1])
                    pos += 2
                elif char == '"':
                    pos += 1
                    break
                else:
                    value.append(char)
                    pos += 1
            fields[name] = "".join(value)
        else:
            end = data.find(" ", pos)
            if end < 0:
                end = length
            fields[name] = data[pos:end]
            pos = end
    return fields


class Client(object):
    """One connection to certline; requests are sent one at a time and answered in order."""

    def __init__(self, host, port, timeout):
        self.host = host
        self.port = port
        self.timeout = timeout
        self._sock = None
        self._buffer = b""

    def where(self):
        return "certline %s:%s" % (self.host, self.port)

    def _connect(self):
        try:
            self._sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        except socket.timeout:
            raise CertlineUnreachable("%s: no connection within %ss" % (self.where(), self.timeout))
        except (socket.error, OSError) as exc:
            raise CertlineUnreachable("%s: cannot connect: %s" % (self.where(), os.strerror(exc.errno) if exc.errno else exc))

    def close(self):
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None
                self._buffer = b""

    def _read_line(self):
        while b"\n" not in self._buffer:
            if len(self._buffer) > MAX_REPLY_BYTES:
                raise CertlineUnreachable("%s: reply line longer than %d bytes" % (self.where(), MAX_REPLY_BYTES))
            try:
                chunk = self._sock.recv(MAX_REPLY_BYTES)
            except socket.timeout:
                raise CertlineUnreachable("%s: no reply within %ss" % (self.where(), self.timeout))
            except (socket.error, OSError) as exc:
                raise CertlineUnreachable("%s: connection failed: %s" % (self.where(), exc))
            if not chunk:
                raise CertlineUnreachable("%s: connection closed before a complete reply" % self.where())
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode("utf-8", "replace").rstrip("\r")

    def request(self, command, **values):
        """Sends `command NAME key value ...` and returns its Reply.

        Raises CertlineError for `status error`, CertlineUnreachable when no reply came.
        The values must have passed `check_value` (the callers check them first, to fail with
        the option's name).
        """
        parts = ["command", command]
        for name in sorted(values):
            parts.extend([name, values[name]])
        line = (" ".join(parts) + "\n").encode("utf-8")
        if self._sock is None:
            self._connect()
        try:
            try:
                self._sock.sendall(line)
            except (socket.error, OSError):
                # A server at its connection cap answers `503 too many connections` at once
                # and closes; that reply may already be waiting, so read before giving up.
                pass
            data = None
            while True:
                reply_line = self._read_line()
                if reply_line.startswith("data "):
                    data = reply_line[len("data "):]
                    continue
                match = STATUS_RE.match(reply_line)
                if match:
                    break
                raise CertlineUnreachable("%s: unexpected reply line %r" % (self.where(), reply_line[:80]))
        except CertlineUnreachable:
            self.close()
            raise
        except (socket.error, OSError) as exc:
            self.close()
            raise CertlineUnreachable("%s: connection failed: %s" % (self.where(), exc))
        ok = match.group(1) == "ok"
        code = int(match.group(2))
        text = match.group(3)
        if not ok:
            # After an error the server may close (413, 503): start afresh next time.
            if code in (413, 503):
                self.close()
            raise CertlineError(code, text, command)
        return Reply(data, ok, code, text)
