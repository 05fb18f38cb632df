# -*- coding: utf-8 -*-
# Copyright: certline contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""What the certline modules share on the Ansible side: their common options, the API key
(masked like a no_log option wherever it came from), the client, and failing a task with the
server's code and text."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.certline.registry.plugins.module_utils.line_protocol import (
    CertlineError,
    Client,
    check_api_key,
    check_value,
    read_api_key_file,
)


def connection_argument_spec():
    """The options every certline module shares (documented in the `connection` fragment)."""
    return dict(
        host=dict(type="str", default="localhost"),
        port=dict(type="int", default=10023),
        timeout=dict(type="float", default=10.0),
    )


def api_key_argument_spec():
    """`api_key` or `api_key_file` (documented in the `api_key` fragment)."""
    return dict(
        api_key=dict(type="str", no_log=True),
        api_key_file=dict(type="path"),
    )


def domains_module(**extra_spec):
    """The AnsibleModule of a module that acts on domains under a key.

    Options: `name` (one or a list), `api_key` or `api_key_file`, the connection options and
    `extra_spec`. Returns (module, api_key, names); every name has been checked to travel as
    one protocol value, so nothing is sent when one cannot.
    """
    argument_spec = dict(
        name=dict(type="list", elements="str", required=True, aliases=["domain", "domains"]),
    )
    argument_spec.update(extra_spec)
    argument_spec.update(connection_argument_spec())
    argument_spec.update(api_key_argument_spec())
    module = AnsibleModule(
        argument_spec=argument_spec,
        mutually_exclusive=[("api_key", "api_key_file")],
        required_one_of=[("api_key", "api_key_file")],
        supports_check_mode=True,
    )
    api_key = module_api_key(module)
    names = module.params["name"]
    for name in names:
        problem = check_value("name", name)
        if problem:
            module.fail_json(msg=problem)
    return module, api_key, names


def module_api_key(module):
    """The API key from `api_key` or `api_key_file`; fails the module on a bad key.

    A key read from a file is added to the module's no_log values, so Ansible masks it in
    every result and log line as it masks `api_key`.
    """
    key = module.params.get("api_key")
    if key is None:
        try:
            key = read_api_key_file(module.params["api_key_file"])
        except ValueError as exc:
            module.fail_json(msg=str(exc))
    module.no_log_values.add(key)
    problem = check_api_key(key)
    if problem:
        module.fail_json(msg=problem)
    return key


def module_client(module):
    """A Client for the module's host, port and timeout."""
    params = module.params
    return Client(params["host"], params["port"], params["timeout"])


def fail_from(module, exc, **result):
    """Fails the module with the server's code and text, or the reason no reply came."""
    if isinstance(exc, CertlineError):
        module.fail_json(
            msg="%s: %s %s" % (result.pop("action", "request"), exc.code, exc.text),
            status_code=exc.code,
            status_text=exc.text,
            **result
        )
    result.pop("action", None)
    module.fail_json(msg=str(exc), **result)
