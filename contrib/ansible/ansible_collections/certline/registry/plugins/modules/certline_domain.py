#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: certline contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: certline_domain
short_description: Register or unregister domains with a certline server
version_added: 0.1.0
description:
  - Registers domains under a certline API key (C(command add)) or removes them
    (C(command remove)), over certline's line protocol.
  - certline forwards every registered domain into Sectigo Certificate Manager, so a playbook
    needs only a certline API key, never Sectigo credentials.
  - Idempotent. The task reports a change only when the server says it changed something
    (C(domain added), C(domain removed)); C(domain already registered) and
    C(domain was not registered) are no change.
  - A refusal fails the task with the server's code and text, for example
    C(406 invalid domain), C(401 unknown api key), C(403 api key revoked) or
    C(503 too many connections); RV(status_code) and RV(status_text) hold them.
author:
  - certline contributors
extends_documentation_fragment:
  - certline.registry.connection
  - certline.registry.connection.api_key
options:
  name:
    description:
      - The domains, one or a list. Each is normalised by the server (lower case, no
        trailing dot, C(https://) and C(:443) removed, IDNs to punycode); a port other than
        443 is kept (C(www.example.org:8443)).
      - A value holding spaces or control characters is refused before anything is sent.
    type: list
    elements: str
    required: true
    aliases: [domain, domains]
  state:
    description:
      - V(present) registers the domains, V(absent) removes them from this key.
      - Removing a domain does not remove it from Sectigo.
    type: str
    choices: [present, absent]
    default: present
attributes:
  check_mode:
    support: full
    details: Asks C(command status) for each domain and predicts the change; sends no write.
  diff_mode:
    support: full
    details: Shows the given domains registered under the key before and after.
notes:
  - Domains are handled in the order given; when one is refused, the ones before it have
    been applied (RV(domains) says which) and the task fails.
seealso:
  - module: certline.registry.certline_apikey
  - module: certline.registry.certline_domain_info
"""

EXAMPLES = r"""
- name: Register this web host's names with certline
  certline.registry.certline_domain:
    host: certline.internal
    api_key_file: /etc/certline/apikey
    name:
      - www.example.edu
      - api.example.edu

- name: Unregister an old name
  certline.registry.certline_domain:
    host: certline.internal
    api_key: "{{ vault_certline_api_key }}"
    name: old.example.edu
    state: absent
"""

RETURN = r"""
domains:
  description: One entry per given name, in order.
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: The name as given.
      type: str
      sample: WWW.Example.EDU.
    domain:
      description: The server's normalised form (the name as given when the server did not
        say, in check mode for a domain that is not registered).
      type: str
      sample: www.example.edu
    changed:
      description: Whether this domain was (or, in check mode, would be) added or removed.
      type: bool
    status:
      description: The server's status text; in check mode, what the module predicts.
      type: str
      sample: domain added
  sample:
    - name: www.example.edu
      domain: www.example.edu
      changed: true
      status: domain added
key_id:
  description: The first 12 hex digits of the API key's SHA-256, as certline's logs and
    admin API show it (the key itself is never returned).
  returned: always
  type: str
  sample: 3f9a1c0d2b4e
status_code:
  description: The server's error code when it refused a request.
  returned: failure
  type: int
  sample: 406
status_text:
  description: The server's error text when it refused a request.
  returned: failure
  type: str
  sample: invalid domain
"""

from ansible_collections.certline.registry.plugins.module_utils.line_protocol import (
    CertlineError,
    CertlineUnreachable,
    key_id,
    parse_status_fields,
)
from ansible_collections.certline.registry.plugins.module_utils.module_support import (
    domains_module,
    fail_from,
    module_client,
)

# The status texts of protocol.md section 7 that mean "nothing changed".
UNCHANGED = {
    "add": "domain already registered",
    "remove": "domain was not registered",
}


def apply(client, command, name, api_key):
    """Sends add/remove; returns (normalised domain, changed, status text, was registered)."""
    reply = client.request(command, domain=name, apikey=api_key)
    changed = reply.text != UNCHANGED[command]
    was_registered = (command == "remove") == changed
    return reply.data or name, changed, reply.text, was_registered


def predict(client, command, name, api_key):
    """Asks `status`; returns what `apply` would return, without writing anything."""
    try:
        reply = client.request("status", domain=name, apikey=api_key)
    except CertlineError as exc:
        if exc.code != 404:
            raise
        registered, domain = False, name
    else:
        registered = True
        domain = parse_status_fields(reply.data or "").get("domain", name)
    if command == "add":
        text = "domain already registered" if registered else "domain would be added"
        return domain, not registered, text, registered
    text = "domain would be removed" if registered else "domain was not registered"
    return domain, registered, text, registered


def main():
    module, api_key, names = domains_module(
        state=dict(type="str", default="present", choices=["present", "absent"]),
    )
    command = "add" if module.params["state"] == "present" else "remove"
    step = predict if module.check_mode else apply

    client = module_client(module)
    results = []
    before, after = [], []
    try:
        for name in names:
            try:
                domain, changed, text, was_registered = step(client, command, name, api_key)
            except (CertlineError, CertlineUnreachable) as exc:
                fail_from(
                    module,
                    exc,
                    action="%s %s %s" % (client.where(), command, name),
                    changed=any(r["changed"] for r in results),
                    domains=results,
                    key_id=key_id(api_key),
                )
            results.append(dict(name=name, domain=domain, changed=changed, status=text))
            if was_registered and domain not in before:
                before.append(domain)
            if command == "add" and domain not in after:
                after.append(domain)
    finally:
        client.close()

    result = dict(
        changed=any(r["changed"] for r in results),
        domains=results,
        key_id=key_id(api_key),
    )
    if module._diff:
        header = "certline domains under key %s" % result["key_id"]
        result["diff"] = dict(
            before_header=header,
            after_header=header,
            before="".join(d + "\n" for d in sorted(before)),
            after="".join(d + "\n" for d in sorted(after)),
        )
    module.exit_json(**result)


if __name__ == "__main__":
    main()
