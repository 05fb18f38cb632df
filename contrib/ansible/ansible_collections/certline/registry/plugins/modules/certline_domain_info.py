#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: certline contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: certline_domain_info
short_description: What certline knows about domains registered under a key
version_added: 0.1.0
description:
  - Asks certline C(command status) for each domain and returns its fields as a dictionary,
    so a playbook can wait until Sectigo has the domain (C(sectigo=synced)) or its DCV is
    done (C(dcv=VALIDATED)).
  - Read-only; never reports a change.
author:
  - certline contributors
extends_documentation_fragment:
  - certline.registry.connection
  - certline.registry.connection.api_key
options:
  name:
    description:
      - The domains, one or a list, as registered (the server normalises them).
    type: list
    elements: str
    required: true
    aliases: [domain, domains]
attributes:
  check_mode:
    support: full
    details: The module only reads.
  diff_mode:
    support: none
seealso:
  - module: certline.registry.certline_domain
"""

EXAMPLES = r"""
- name: Wait until Sectigo has the domain and its DCV is done
  certline.registry.certline_domain_info:
    host: certline.internal
    api_key_file: /etc/certline/apikey
    name: www.example.edu
  register: certline
  until: >-
    certline.domains['www.example.edu'].sectigo | default('') == 'synced'
    and certline.domains['www.example.edu'].dcv | default('') == 'VALIDATED'
  retries: 60
  delay: 60

- name: Say which DNS record to publish when certline cannot publish it itself
  ansible.builtin.debug:
    msg: >-
      publish {{ certline.domains['www.example.edu'].dcv_record_type }}
      {{ certline.domains['www.example.edu'].dcv_host }} ->
      {{ certline.domains['www.example.edu'].dcv_value }}
  when: certline.domains['www.example.edu'].sectigo | default('') == 'dcv_action_required'
"""

RETURN = r"""
domains:
  description:
    - One entry per given name, keyed by the name as given.
    - Each holds the C(status) fields of certline's protocol.md as strings (C(domain),
      C(registered), C(key), C(sectigo), C(id), C(dcv), C(dcv_expires), C(ct), C(checked),
      C(dcv_record_type), C(dcv_host), C(dcv_value), C(next_attempt), C(error_step),
      C(error_code), C(error), C(bridge)); optional fields are absent when the server does not
      show them. Quoted values (C(dcv_value), C(error)) are unquoted.
    - C(present) is V(true) for a registered domain and V(false) for one the key does not
      hold (the server's C(404 domain not registered)); C(raw) is the server's data line.
  returned: always
  type: dict
  sample:
    www.example.edu:
      present: true
      domain: www.example.edu
      registered: "2026-11-23T10:00:00Z"
      key: confirmed
      sectigo: synced
      id: "396"
      dcv: VALIDATED
      dcv_expires: "2027-05-21"
      ct: "on"
      checked: "2026-11-23T10:00:05Z"
      raw: domain=www.example.edu registered=2026-11-23T10:00:00Z key=confirmed sectigo=synced ...
    old.example.edu:
      present: false
status_code:
  description: The server's error code when it refused a request.
  returned: failure
  type: int
  sample: 401
status_text:
  description: The server's error text when it refused a request.
  returned: failure
  type: str
  sample: unknown api key
"""

from ansible_collections.certline.registry.plugins.module_utils.line_protocol import (
    CertlineError,
    CertlineUnreachable,
    parse_status_fields,
)
from ansible_collections.certline.registry.plugins.module_utils.module_support import (
    domains_module,
    fail_from,
    module_client,
)


def domain_status(client, name, api_key):
    """The status fields of one domain, with `present` and `raw`."""
    try:
        reply = client.request("status", domain=name, apikey=api_key)
    except CertlineError as exc:
        if exc.code == 404:
            return dict(present=False)
        raise
    data = reply.data or ""
    fields = parse_status_fields(data)
    fields["present"] = True
    fields["raw"] = data
    return fields


def main():
    module, api_key, names = domains_module()
    client = module_client(module)
    domains = {}
    try:
        for name in names:
            try:
                domains[name] = domain_status(client, name, api_key)
            except (CertlineError, CertlineUnreachable) as exc:
                fail_from(module, exc, action="%s status %s" % (client.where(), name), domains=domains)
            except ValueError as exc:
                module.fail_json(msg="%s: cannot read the status of %s: %s" % (client.where(), name, exc))
    finally:
        client.close()
    module.exit_json(changed=False, domains=domains)


if __name__ == "__main__":
    main()
