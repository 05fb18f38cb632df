# -*- coding: utf-8 -*-
# Copyright: certline contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""Options every certline module shares: where the server is, and the API key."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):

    # host, port, timeout: every module.
    DOCUMENTATION = r"""
options:
  host:
    description:
      - The certline server's host name or address.
      - The module connects from the managed node, so with C(delegate_to) it connects from
        the delegated host.
    type: str
    default: localhost
  port:
    description:
      - The certline line-protocol port (plain TCP, no TLS).
    type: int
    default: 10023
  timeout:
    description:
      - Seconds allowed for connecting and for each reply.
    type: float
    default: 10.0
notes:
  - The modules speak certline's line protocol over a plain socket and need nothing beyond
    Python's standard library on the managed node.
"""

    # api_key / api_key_file: the modules that act under a key.
    API_KEY = r"""
options:
  api_key:
    description:
      - The certline API key the domains are registered under.
      - Never logged or shown in results (C(no_log)).
      - Exactly one of O(api_key) and O(api_key_file) is required.
    type: str
  api_key_file:
    description:
      - A file on the managed node holding the API key on its first line, as
        M(certline.registry.certline_apikey) writes it.
      - The key read from it is masked in every result and log line like O(api_key).
    type: path
"""
