#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: certline contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: certline_apikey
short_description: Get or claim a certline API key and keep it in a private file
version_added: 0.1.0
description:
  - Makes sure the file O(path) on the managed node holds a certline API key, with mode
    C(0600), for M(certline.registry.certline_domain) to use through its C(api_key_file) option.
  - An existing file is reused; the server is asked for a new key (C(command apikey)) only
    when the file does not exist yet. Running the task again changes nothing.
  - With O(email), the key is claimed with that address (C(command claim)); certline then
    mails the address a link to confirm the key. The task reports a change only for a new
    claim (C(api key claimed)), not for C(api key already claimed).
  - Without O(email), a key kept in the file is checked with the read-only C(command list),
    so a revoked (C(403)) or unknown (C(401)) key fails the task.
  - The key is never returned; RV(key_id) identifies it as certline's logs do.
author:
  - certline contributors
extends_documentation_fragment:
  - certline.registry.connection
options:
  path:
    description:
      - The file that keeps the key (its only line). Its directory must exist.
      - Written atomically (a temporary file in the same directory, then renamed), mode C(0600)
        from the start; an existing file with another mode is set to C(0600).
    type: path
    required: true
  email:
    description:
      - Claim the key with this address. A key claimed by another address fails with
        C(409 api key claimed by another email).
    type: str
  api_key:
    description:
      - Keep this key instead of asking the server for one, for a key made elsewhere (16-64
        characters of C(A-Z a-z 0-9 -) for a key the client makes itself; with O(email) the
        claim creates it on the server). A file holding another key is overwritten.
      - Never logged or shown in results (C(no_log)).
    type: str
attributes:
  check_mode:
    support: partial
    details:
      - Reports whether the file would be written or its mode changed, and checks a kept key
        with C(command list); it neither asks for a key nor claims one.
      - certline has no read-only way to ask whether a key is claimed, so RV(claim) is
        C(unknown in check mode) and check mode predicts no change for the claim.
  diff_mode:
    support: none
seealso:
  - module: certline.registry.certline_domain
"""

EXAMPLES = r"""
- name: A certline API key for this host, claimed by the team
  certline.registry.certline_apikey:
    host: certline.internal
    path: /etc/certline/apikey
    email: webteam@example.edu

- name: Register the host's names with it
  certline.registry.certline_domain:
    host: certline.internal
    api_key_file: /etc/certline/apikey
    name: "{{ inventory_hostname }}"
"""

RETURN = r"""
path:
  description: The key file.
  returned: always
  type: str
  sample: /etc/certline/apikey
key_id:
  description: The first 12 hex digits of the key's SHA-256, as certline's logs and admin
    API show it. Absent in check mode when no key exists yet.
  returned: when a key is known
  type: str
  sample: 3f9a1c0d2b4e
created:
  description: Whether the server made a new key in this run (or would, in check mode).
  returned: always
  type: bool
claim:
  description: The server's answer to the claim (C(api key claimed), C(api key already
    claimed), C(api key created and claimed)); C(unknown in check mode); absent without
    O(email).
  returned: when O(email) is given
  type: str
  sample: api key already claimed
status_code:
  description: The server's error code when it refused a request.
  returned: failure
  type: int
  sample: 409
status_text:
  description: The server's error text when it refused a request.
  returned: failure
  type: str
  sample: api key claimed by another email
"""

import os
import stat
import tempfile

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.certline.registry.plugins.module_utils.line_protocol import (
    CLIENT_MADE_KEY_RE,
    CertlineError,
    CertlineUnreachable,
    check_api_key,
    check_value,
    key_id,
)
from ansible_collections.certline.registry.plugins.module_utils.module_support import (
    connection_argument_spec,
    fail_from,
    module_client,
)

PRIVATE = 0o600


def read_kept_key(module, path):
    """The key in `path`, or None when the file does not exist or is empty."""
    if not os.path.exists(path):
        return None
    try:
        with open(path, "r") as handle:
            key = handle.readline().strip()
    except (IOError, OSError) as exc:
        module.fail_json(msg="cannot read %s: %s" % (path, exc))
    if not key:
        return None
    module.no_log_values.add(key)
    problem = check_api_key(key)
    if problem:
        module.fail_json(msg="%s does not hold an API key (%s); fix or remove it" % (path, problem))
    return key


def write_private(module, path, key):
    """Writes `key` to `path` with mode 0600 from the first byte, atomically."""
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        module.fail_json(msg="the directory %s does not exist; create it first" % directory)
    fd, tmp = tempfile.mkstemp(prefix=".certline-apikey.", dir=directory)
    try:
        os.fchmod(fd, PRIVATE)
        os.write(fd, (key + "\n").encode("ascii"))
        os.fsync(fd)
        os.close(fd)
        fd = None
        os.rename(tmp, path)
    except (IOError, OSError) as exc:
        if fd is not None:
            os.close(fd)
        if os.path.exists(tmp):
            os.unlink(tmp)
        module.fail_json(msg="cannot write %s: %s" % (path, exc))


def main():
    argument_spec = dict(
        path=dict(type="path", required=True),
        email=dict(type="str"),
        api_key=dict(type="str", no_log=True),
    )
    argument_spec.update(connection_argument_spec())
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    params = module.params
    path = params["path"]
    email = params["email"]
    wanted = params["api_key"]
    if email is not None:
        problem = check_value("email", email)
        if problem:
            module.fail_json(msg=problem)
    if wanted is not None:
        module.no_log_values.add(wanted)
        problem = check_api_key(wanted)
        if problem:
            module.fail_json(msg="api_key: %s" % problem)

    kept = read_kept_key(module, path)
    key = wanted if wanted is not None else kept
    result = dict(changed=False, path=path, created=key is None)
    if email is not None:
        result["claim"] = "unknown in check mode" if module.check_mode else None

    client = module_client(module)
    try:
        if key is None:
            if module.check_mode:
                module.exit_json(changed=True, **{k: v for k, v in result.items() if k != "changed"})
            values = {"email": email} if email is not None else {}
            reply = client.request("apikey", **values)
            key = (reply.data or "").strip()
            module.no_log_values.add(key)
            if check_api_key(key):
                module.fail_json(msg="%s answered the apikey request without a key" % client.where())
            if email is not None:
                result["claim"] = reply.text
        elif email is not None and not module.check_mode:
            reply = client.request("claim", apikey=key, email=email)
            result["claim"] = reply.text
            result["changed"] = reply.text != "api key already claimed"
        else:
            try:
                client.request("list", apikey=key)
            except CertlineError as exc:
                # In check mode, a client-made key with an e-mail is created by its claim.
                creatable = email is not None and exc.code == 401 and CLIENT_MADE_KEY_RE.match(key)
                if not (module.check_mode and creatable):
                    raise
                result["changed"] = True
    except (CertlineError, CertlineUnreachable) as exc:
        fail_from(module, exc, action="%s %s" % (client.where(), getattr(exc, "request_name", "request")), **result)
    finally:
        client.close()
    result["key_id"] = key_id(key)

    if key != kept:
        result["changed"] = True
        if not module.check_mode:
            write_private(module, path, key)
    elif stat.S_IMODE(os.stat(path).st_mode) != PRIVATE:
        result["changed"] = True
        if not module.check_mode:
            os.chmod(path, PRIVATE)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
