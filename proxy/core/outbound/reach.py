"""Where a registered binding is reached: at its Contact, or over the flow its REGISTER came
by. One rule, written once, used by the routing of every node
(``routing.target_for_binding``) and by the shared-state side (``shared.held_elsewhere``), so
that a call reaches a phone at the same address whichever node of a shared state it arrives
at.

* RFC 3261 10.3 (step 7) and 16.5: the location service gives the binding's Contact, and
  that URI is the target. So by default a binding is reached at its Contact: a public
  address, a host name, an address on the source's own host (a UA may send from another port
  than it listens on, RFC 3261 18.1.1), and a Contact that is simply elsewhere (a third-party
  registration, RFC 3261 10.2) are all taken as the UA wrote them.
* RFC 5626 5.3: a SIP Outbound binding (``+sip.instance`` and ``reg-id``) is reached over its
  flow.
* **Behind NAT** (the rule RFC 3261 leaves to the proxy; RFC 5626 3 describes the problem):
  a Contact naming a private-use or link-local IP address (RFC 1918, RFC 6598, RFC 3927,
  RFC 4193, RFC 4291 link-local; a loopback address when the REGISTER did not come from
  one) that is not the address the REGISTER came from cannot be reached from here: the UA is
  behind a NAT. It is reached where its REGISTER came from, the address its response went to
  (RFC 3261 18.2.2 with RFC 3581 ``received``/``rport``), through the mapping the REGISTER
  opened, and only from the socket that received it (a port-restricted NAT drops anything
  else): another node goes through the node that holds it. This is what Kamailio's
  ``fix_nated_register`` with ``nat_uac_test`` (private Contact) does.
* A stream (TCP/TLS) binding whose Contact is the far end of its connection, host and port,
  is reached over that connection (RFC 5923's reuse): no one listens at that ephemeral port.
"""

from __future__ import annotations

from proxy.core.access.sources import AddressSet
from proxy.core.registrar.location import Binding
from proxy.sip import ParseError, SipUri, parse_uri

#: addresses a Contact names only from behind a NAT (or on the proxy's own private network,
#: where the REGISTER comes from that same address)
_PRIVATE = AddressSet((
    "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16",  # RFC 1918
    "100.64.0.0/10",  # RFC 6598, carrier-grade NAT
    "169.254.0.0/16", "fe80::/10",  # RFC 3927, RFC 4291 link-local
    "fc00::/7",  # RFC 4193 unique local
), "private networks")
_LOOPBACK = AddressSet(("127.0.0.0/8", "::1"), "loopback")


def behind_nat(contact_host: str, source_host: str) -> bool:
    """Whether a Contact host says its UA is behind a NAT, the REGISTER having come from
    ``source_host`` (see the module docstring)."""
    if contact_host == source_host:
        return False
    if contact_host in _PRIVATE:
        return True
    return contact_host in _LOOPBACK and source_host not in _LOOPBACK


def over_flow(b: Binding) -> bool:
    """Whether requests for ``b`` go over the flow its REGISTER came by (its source address,
    its connection) rather than to its Contact: an outbound binding, a UA behind NAT, a
    stream whose Contact is its connection, a WebSocket client (RFC 7118 5.3: its Contact,
    ``...@xxxx.invalid;transport=ws``, reaches nobody) (the module docstring has the rule)."""
    if b.on_flow:  # outbound (reg-id) or WebSocket
        return True
    try:
        uri = parse_uri(b.uri.split("?", 1)[0])
    except ParseError:
        return False
    if not isinstance(uri, SipUri):
        return False
    host, port = uri.host_port()
    f = b.flow
    if f.transport != "udp" and host == f.host and port == f.port:
        return True
    return behind_nat(host, f.host)
