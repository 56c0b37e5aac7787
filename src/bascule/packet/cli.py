"""The packet-mode commands of `bascule`: testbed, trace, realserver, services.

Rules of this module:
- `register` only adds subcommands; each sets `handler`, which `bascule.cli.main` calls with the
  parsed arguments and whose int is the exit status (0 ok, 1 failed, 2 bad usage).
- Failures print one line naming what to do, never a traceback.
- `trace` uses the one testbed that is up, or builds one for the trace and removes it after.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from typing import Any

from bascule.packet import apply, realserver, testbed, trace


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    bed = subparsers.add_parser("testbed", help="build or remove the netns testbed (seed 000)")
    bed_sub = bed.add_subparsers(dest="testbed_command", required=True)
    up = bed_sub.add_parser("up", help="build client, router, lb and two servers in namespaces")
    up.set_defaults(handler=_testbed_up)
    down = bed_sub.add_parser("down", help="remove testbeds (all recorded ones by default)")
    down.add_argument("--suffix", help="remove only this testbed")
    down.set_defaults(handler=_testbed_down)

    tr = subparsers.add_parser("trace", help="run one request through a mode and show the packets")
    tr.add_argument("--mode", choices=("proxy", "transparent", "nat", "dsr"), required=True)
    tr.add_argument("--protocol", choices=("tcp", "udp"), default="tcp")
    tr.set_defaults(handler=_trace)

    rs = subparsers.add_parser("realserver", help="what a DSR endpoint needs (VIP on lo, ARP)")
    rs.add_argument("--vip", required=True, help="the service's VIP")
    rs.add_argument("--apply", action="store_true", help="run the commands instead of printing")
    rs.add_argument("--undo", action="store_true", help="remove the VIP from lo")
    rs.set_defaults(handler=_realserver)

    sv = subparsers.add_parser("services", help="show what bascule programmed into nftables")
    sv.add_argument("--netns", help="look inside this network namespace")
    sv.add_argument("--json", action="store_true", help="machine-readable output")
    sv.set_defaults(handler=_services)


def _fail(message: str) -> int:
    print(f"bascule: {message}", file=sys.stderr)
    return 1


def _testbed_up(args: argparse.Namespace) -> int:
    try:
        apply.check_privileges()
        bed = testbed.up()
    except (apply.PacketError, testbed.TestbedError) as exc:
        return _fail(str(exc))
    print(f"testbed {bed.suffix} is up:")
    for host in bed.hosts:
        print(f"  {host:7} {bed.ns(host):20} {bed.address(host)}")
    print(f"  VIP {testbed.VIP} on lb; client {testbed.CLIENT_IP} reaches it through the router")
    print(f"try: ip netns exec {bed.ns('client')} curl http://{testbed.VIP}/")
    print("remove with: bascule testbed down")
    return 0


def _testbed_down(args: argparse.Namespace) -> int:
    try:
        if args.suffix:
            matches = [b for b in testbed.recorded() if b.suffix == args.suffix]
            testbed.down(matches[0] if matches else testbed.Testbed(suffix=args.suffix))
            removed = [args.suffix]
        else:
            removed = testbed.down_all()
    except testbed.TestbedError as exc:
        return _fail(str(exc))
    print(f"removed {', '.join(removed)}" if removed else "no testbed was up")
    return 0


def _trace(args: argparse.Namespace) -> int:
    try:
        apply.check_privileges()
        beds = testbed.recorded()
        if len(beds) > 1:
            return _fail("several testbeds are up; remove all but one (bascule testbed down)")
        if beds:
            result = trace.trace(beds[0], args.mode, args.protocol)
        else:
            with testbed.testbed() as bed:
                result = trace.trace(bed, args.mode, args.protocol)
    except (apply.PacketError, testbed.TestbedError, RuntimeError, ValueError) as exc:
        return _fail(str(exc))
    print(trace.render(result), end="")
    return 0 if not result.response.startswith("error") else 1


def _realserver(args: argparse.Namespace) -> int:
    try:
        commands = realserver.undo_plan(args.vip) if args.undo else realserver.plan(args.vip)
    except ValueError:
        return _fail(f"--vip must be an IPv4 or IPv6 address, got {args.vip!r}")
    if not args.apply:
        print(realserver.render(commands), end="")
        return 0
    try:
        realserver.apply(commands)
    except RuntimeError as exc:
        return _fail(str(exc))
    print(f"done: {'removed' if args.undo else 'serving'} {args.vip} for DSR")
    return 0


def _nft_json(argv: list[str], netns: str | None) -> dict[str, Any]:
    base = argv if netns is None else ["ip", "netns", "exec", netns, *argv]
    try:
        done = subprocess.run(base, capture_output=True, text=True, check=False, timeout=30)
    except FileNotFoundError:
        raise apply.PacketError(f"{base[0]}: command not found") from None
    except subprocess.TimeoutExpired:
        raise apply.PacketError(f"`{' '.join(argv)}` did not finish in 30 s") from None
    if done.returncode != 0:
        raise apply.PacketError(done.stderr.strip())
    try:
        data: dict[str, Any] = json.loads(done.stdout or "{}")
    except ValueError as e:
        raise apply.PacketError(f"`{' '.join(argv)}` printed no JSON: {e}") from None
    return data


def _services(args: argparse.Namespace) -> int:
    try:
        apply.check_privileges()
        summary: list[dict[str, Any]] = []
        for family, name in sorted(apply.bascule_tables(args.netns)):
            data = _nft_json(["nft", "-j", "list", "table", family, name], args.netns)
            maps: dict[str, dict[str, int]] = {}
            rules = []
            for item in data.get("nftables", []):
                if "map" in item:
                    counts: dict[str, int] = {}
                    for _key, value in item["map"].get("elem", []):
                        if item["map"]["name"].startswith("flows_"):
                            value = f"pinned to {value}"
                        counts[str(value)] = counts.get(str(value), 0) + 1
                    maps[item["map"]["name"]] = counts
                elif "rule" in item:
                    rules.append(item["rule"].get("handle"))
            summary.append({"table": f"{family} {name}", "rules": len(rules), "maps": maps})
    except apply.PacketError as exc:
        return _fail(str(exc))
    from bascule.packet.runtime import read_status

    endpoints = read_status(args.netns)
    if args.json:
        print(json.dumps({"tables": summary, "endpoints": endpoints}, indent=2))
        return 0
    if not summary:
        print("no bascule tables are programmed")
    for table in summary:
        print(f"table {table['table']}: {table['rules']} rules")
        for map_name, counts in table["maps"].items():
            total = sum(counts.values())
            print(f"  {map_name}: {total} entries")
            for value, count in sorted(counts.items()):
                share = f" ({100 * count / total:.1f}%)" if map_name.startswith("slots_") else ""
                print(f"    {value}: {count}{share}")
    if endpoints is None:
        print("no running bascule reports endpoint health here")
        return 0
    print("endpoints (from the running bascule):")
    for e in endpoints:
        value = f" ({e['value']})" if e["value"] != e["address"] else ""
        print(
            f"  {e['service']} {e['address']}{value}: {'up' if e['up'] else 'DOWN'}, "
            f"weight {e['weight']}, {e['slots']} slots"
        )
    return 0
