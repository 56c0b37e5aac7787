"""Discovery: DNS (A, AAAA, SRV with dnspython, against a real DNS server on loopback) and a
watched file; endpoint set changes reach the workers without dropping exchanges in flight."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from pathlib import Path
from typing import Any

import dns.message
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import httpx
import yaml

from bascule.config.schema import DiscoveryConfig
from bascule.upstream.discovery import resolve
from helpers import Backend, BackendHandler, Seen, echo, free_port, proxy_config, running


class DnsServer:
    """A UDP DNS server in a thread answering from `records`: (name, type) → rdata texts."""

    def __init__(self) -> None:
        self.records: dict[tuple[str, str], list[str]] = {}
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.running = True
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while self.running:
            try:
                data, peer = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            query = dns.message.from_wire(data)
            response = dns.message.make_response(query)
            question = query.question[0]
            name = question.name.to_text()
            kind = dns.rdatatype.to_text(question.rdtype)
            texts = self.records.get((name, kind), [])
            if texts:
                response.answer.append(
                    dns.rrset.from_text_list(name, 5, dns.rdataclass.IN, kind, texts)
                )
            self.sock.sendto(response.to_wire(), peer)

    def stop(self) -> None:
        self.running = False
        self.thread.join()
        self.sock.close()


def test_dns_a_aaaa_and_srv() -> None:
    server = DnsServer()
    server.records = {
        ("web.test.", "A"): ["127.0.0.2", "127.0.0.1"],
        ("web.test.", "AAAA"): ["::1"],
        ("_http._tcp.web.test.", "SRV"): [
            "10 5 8001 a.web.test.", "10 20 8002 b.web.test.", "20 1 8003 c.web.test.",
        ],
        ("a.web.test.", "A"): ["127.0.0.11"],
        ("b.web.test.", "A"): ["127.0.0.12"],
        ("c.web.test.", "AAAA"): ["::1"],
    }
    resolver = f"127.0.0.1:{server.port}"

    def spec(**kw: Any) -> DiscoveryConfig:
        return DiscoveryConfig.model_validate({"resolver": resolver, "interval": 1, **kw})

    try:
        both = asyncio.run(resolve(spec(dns="web.test", port=80)))
        assert [e["address"] for e in both] == ["127.0.0.1:80", "127.0.0.2:80", "[::1]:80"]
        only4 = asyncio.run(resolve(spec(dns="web.test", port=80, record="A",
                                         endpoint={"weight": 3})))
        assert only4 == [{"weight": 3, "address": "127.0.0.1:80"},
                         {"weight": 3, "address": "127.0.0.2:80"}]
        srv = asyncio.run(resolve(spec(dns="_http._tcp.web.test", record="SRV")))
        assert srv == [
            {"address": "127.0.0.11:8001", "weight": 5},
            {"address": "127.0.0.12:8002", "weight": 20},
            {"address": "[::1]:8003", "weight": 1, "backup": True},  # a lower priority
        ]
    finally:
        server.stop()


def test_dns_discovery_through_the_proxy(tmp_path: Path) -> None:
    b1, b2 = Backend(name="b1"), Backend(name="b2")
    server = DnsServer()
    # Both backends listen on 127.0.0.1: SRV gives each its own port.
    server.records = {
        ("_web._tcp.test.", "SRV"): [f"0 1 {b1.port} one.test."],
        ("one.test.", "A"): ["127.0.0.1"],
    }
    port = free_port()
    config = proxy_config(port, [], workers=2, cluster={"discovery": {
        "dns": "_web._tcp.test", "record": "SRV", "resolver": f"127.0.0.1:{server.port}",
        "interval": 0.2,
    }})
    try:
        with running(config, tmp_path, port):
            time.sleep(0.5)
            seen = {who(port) for _ in range(6)}
            assert seen == {"b1"}
            server.records[("_web._tcp.test.", "SRV")] = [f"0 1 {b2.port} one.test."]
            time.sleep(0.6)
            assert {who(port) for _ in range(6)} == {"b2"}
            server.records.pop(("_web._tcp.test.", "SRV"))  # a failing lookup keeps the set
            time.sleep(0.6)
            assert {who(port) for _ in range(6)} == {"b2"}
    finally:
        server.stop()
        b1.stop()
        b2.stop()


def who(port: int) -> str:
    r = httpx.get(f"http://127.0.0.1:{port}/", timeout=5)
    assert r.status_code == 200, r.text
    return str(json.loads(r.content)["backend"])


def test_file_discovery_keeps_exchanges_in_flight(tmp_path: Path) -> None:
    def slow(h: BackendHandler, seen: Seen) -> None:
        if seen.path == "/slow":
            time.sleep(0.8)
        echo(h, seen)

    b1, b2 = Backend(slow, name="b1"), Backend(slow, name="b2")
    endpoints = tmp_path / "endpoints.yaml"
    endpoints.write_text(yaml.safe_dump([{"address": b1.address}]))
    port = free_port()
    config = proxy_config(port, [], cluster={
        "discovery": {"file": str(endpoints), "interval": 0.1},
    })
    try:
        with running(config, tmp_path, port):
            assert {who(port) for _ in range(4)} == {"b1"}
            result: list[int] = []
            slow_request = threading.Thread(target=lambda: result.append(
                httpx.get(f"http://127.0.0.1:{port}/slow", timeout=5).status_code))
            slow_request.start()
            time.sleep(0.2)
            # b1 leaves, b2 arrives, while b1 still serves the slow request.
            endpoints.write_text(yaml.safe_dump([{"address": b2.address, "weight": 2}]))
            time.sleep(0.4)
            assert {who(port) for _ in range(4)} == {"b2"}
            slow_request.join()
            assert result == [200]
            endpoints.write_text("not: [a list")  # a bad file keeps the last good set
            time.sleep(0.3)
            assert {who(port) for _ in range(4)} == {"b2"}
    finally:
        b1.stop()
        b2.stop()
