"""RFC 3263 resolution (proxy/runtime/resolver.py, proxy/runtime/dns.py) against dnsmasq, a DNS
server of another implementation run as a process on a loopback port (tests/dns_servers.py):
its NAPTR, SRV and A records on the wire. The resolver's behaviour in detail is in
tests/unit/test_runtime_resolver.py, against an in-process server."""

from __future__ import annotations

from pathlib import Path

from proxy.runtime.dns import DnsClient
from proxy.runtime.resolver import Hop, Resolver
from tests.dns_servers import Dnsmasq
from tests.unit.test_runtime_resolver import Clock, addrs


async def test_dnsmasq_naptr_srv_and_a(tmp_path: Path) -> None:
    """The same procedure against dnsmasq, an independent DNS server (its NAPTR, SRV and A
    records on the wire)."""
    server = Dnsmasq(tmp_path, [
        "--naptr-record=carrier.test,10,50,S,SIP+D2U,,_sip._udp.carrier.test",
        "--srv-host=_sip._udp.carrier.test,uas2.carrier.test,5072,20,60",
        "--srv-host=_sip._udp.carrier.test,uas1.carrier.test,5071,10,60",
        "--host-record=uas1.carrier.test,192.0.2.1",
        "--host-record=uas2.carrier.test,192.0.2.2",
    ]).start()
    try:
        client = DnsClient((("127.0.0.1", server.port),), clock=Clock(), timeout=0.5)
        found = await Resolver(client, families=("A",)).targets(Hop("carrier.test"))
        assert addrs(found.targets) == [("udp", "192.0.2.1", 5071), ("udp", "192.0.2.2", 5072)]
        assert not found.failed
        assert any("query[NAPTR] carrier.test" in q for q in server.queries())
    finally:
        server.stop()
