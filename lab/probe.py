#!/usr/bin/python3
"""NAT lab probes, independent of ntcp's own code, used by `ntcp-lab verify`.

`serve` runs on the public server: UDP and TCP reflectors on two addresses and
two ports that report the source address they see, and that on request answer
from another address/port or send a TCP SYN to a given address.  `client` runs
behind a NAT, talks to the reflectors and prints what it observed as JSON; the
classification into RFC 4787/5382 terms is done by `classify()`.  `rtt`
measures round trips and loss to a reflector, for the link tests.
"""

import argparse
import json
import os
import select
import socket
import struct
import sys
import threading
import time

TIMEOUT = 0.6  # how long a probe waits for an answer that may never come


def log(*args):
    print(*args, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# server side


def syn_probe(from_ip, to_ip, to_port, timeout):
    """Sends one TCP SYN and says what came back: 'connected', 'rst', 'icmp'
    or 'timeout'.  connect() alone maps both RST and ICMP port-unreachable to
    ECONNREFUSED, so a raw ICMP socket watches for the error too."""
    icmp = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind((from_ip, 0))
    s.setblocking(False)
    sport = s.getsockname()[1]
    result = None
    try:
        s.connect((to_ip, to_port))
    except BlockingIOError:
        pass
    except OSError:
        result = "error"
    deadline = time.monotonic() + timeout
    while result is None:
        left = deadline - time.monotonic()
        if left <= 0:
            result = "timeout"
            break
        r, w, _ = select.select([icmp], [s], [], left)
        if icmp in r:
            pkt = icmp.recv(2048)
            ihl = (pkt[0] & 15) * 4
            typ = pkt[ihl]
            inner = pkt[ihl + 8:]
            if typ == 3 and len(inner) >= 24:
                iihl = (inner[0] & 15) * 4
                dst = socket.inet_ntoa(inner[16:20])
                isport, idport = struct.unpack("!HH", inner[iihl:iihl + 4])
                if dst == to_ip and idport == to_port and isport == sport:
                    result = "icmp"
        if s in w and result is None:
            err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err == 0:
                result = "connected"
            elif err == 111:  # ECONNREFUSED: RST, unless an ICMP is in flight
                r2, _, _ = select.select([icmp], [], [], 0.05)
                if r2:
                    continue
                result = "rst"
            elif err in (113, 101):  # EHOSTUNREACH, ENETUNREACH: ICMP
                result = "icmp"
            else:
                result = "error %d" % err
    s.close()
    icmp.close()
    return result


def serve(args):
    ips = args.ips.split(",")
    ports = [int(p) for p in args.ports.split(",")]
    udp = {}
    tcp = {}
    for ip in ips:
        for port in ports:
            u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            u.bind((ip, port))
            udp[(ip, port)] = u
            t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            t.bind((ip, port))
            t.listen(64)
            tcp[(ip, port)] = t
    print("ready", flush=True)
    end = time.monotonic() + args.duration
    socks = list(udp.values()) + list(tcp.values())
    by_fd = {s.fileno(): k for k, s in udp.items()}
    while time.monotonic() < end:
        r, _, _ = select.select(socks, [], [], 1.0)
        for s in r:
            if s.type == socket.SOCK_STREAM:
                try:
                    c, peer = s.accept()
                    c.sendall((json.dumps({"seen": "%s:%d" % peer}) + "\n").encode())
                    c.close()  # the server closes first: TIME_WAIT stays here
                except OSError:
                    pass
                continue
            data, peer = s.recvfrom(2048)
            try:
                req = json.loads(data)
            except ValueError:
                continue
            me = by_fd[s.fileno()]
            rep = {"seen": "%s:%d" % peer, "via": "%s:%d" % me, "nonce": req.get("nonce")}
            op = req.get("op")
            if op == "echo":
                s.sendto(json.dumps(rep).encode(), peer)
            elif op == "from":
                other = udp.get((req["ip"], int(req["port"])))
                if other:
                    rep["via"] = "%s:%s" % (req["ip"], req["port"])
                    other.sendto(json.dumps(rep).encode(), peer)
            elif op == "syn":
                def run(sock=s, peer=peer, req=req, rep=rep):
                    rep["syn"] = syn_probe(req["from_ip"], req["to_ip"], int(req["to_port"]),
                                           float(req.get("timeout", 1.5)))
                    sock.sendto(json.dumps(rep).encode(), peer)
                threading.Thread(target=run, daemon=True).start()


# --------------------------------------------------------------------------
# client side


class Udp:
    def __init__(self, port=0):
        self.s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.s.bind(("0.0.0.0", port))
        self.port = self.s.getsockname()[1]
        self.n = 0

    def ask(self, server, req, timeout=TIMEOUT, tries=3):
        """Sends req to server and returns the matching reply (by nonce) or
        None.  Retries cover a lossy link."""
        sent = set()  # a late answer to an earlier try is as good
        for _ in range(tries):
            self.n += 1
            nonce = "%d-%d" % (self.port, self.n)
            sent.add(nonce)
            self.s.sendto(json.dumps(dict(req, nonce=nonce)).encode(), server)
            rep = self.wait(lambda m: m.get("nonce") in sent, timeout)
            if rep is not None:
                return rep
        return None

    def wait(self, match, timeout):
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            r, _, _ = select.select([self.s], [], [], left)
            if not r:
                return None
            data, peer = self.s.recvfrom(2048)
            try:
                m = json.loads(data)
            except ValueError:
                continue
            m["_from"] = "%s:%d" % peer
            if match(m):
                return m


def split(ep):
    ip, port = ep.rsplit(":", 1)
    return ip, int(port)


def tcp_seen(local_port, server, timeout=2.0):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind(("0.0.0.0", local_port))
    s.settimeout(timeout)
    try:
        s.connect(server)
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(256)
            if not chunk:
                break
            data += chunk
        return json.loads(data)["seen"]
    except (OSError, ValueError):
        return None
    finally:
        s.close()


def client(args):
    s1, s2 = args.server.split(",")
    p1, p2 = [int(p) for p in args.ports.split(",")]
    eps = [(s1, p1), (s2, p1), (s2, p2), (s1, p2)]
    out = {}

    # Mapping and allocation (UDP): one socket to four server endpoints, then
    # three fresh sockets to the first one.  Every one of these is a new
    # mapping on a symmetric NAT, in this order.
    u = Udp(args.port)
    out["udp_local_port"] = u.port
    seen = []
    for ep in eps:
        rep = u.ask(ep, {"op": "echo"})
        seen.append(rep["seen"] if rep else None)
    out["udp_mapping"] = seen
    fresh = []
    for _ in range(3):
        f = Udp()
        rep = f.ask(eps[0], {"op": "echo"})
        fresh.append([f.port, rep["seen"] if rep else None])
        f.s.close()
    out["udp_fresh"] = fresh

    # Filtering: a fresh socket talks to S1:p1 only, then asks for answers
    # from another address (and port) and from another port of S1.
    f = Udp()
    rep = f.ask(eps[0], {"op": "echo"})
    out["filter_mapped"] = rep["seen"] if rep else None
    got = {}
    for name, (ip, port) in (("other_addr", (s2, p2)), ("other_port", (s1, p2))):
        rep = f.ask(eps[0], {"op": "from", "ip": ip, "port": port}, tries=2)
        got[name] = rep is not None and rep.get("_from") == "%s:%d" % (ip, port)
    out["udp_filter"] = got

    # Hairpin: two sockets learn their mapped addresses, then send to each
    # other's mapped address.
    h1, h2 = Udp(), Udp()
    m1 = h1.ask(eps[0], {"op": "echo"})
    m2 = h2.ask(eps[0], {"op": "echo"})
    hp = {"m1": m1 and m1["seen"], "m2": m2 and m2["seen"], "received_from": None}
    if m1 and m2:
        for _ in range(3):
            h1.s.sendto(json.dumps({"op": "hello"}).encode(), split(m2["seen"]))
            rep = h2.wait(lambda m: m.get("op") == "hello", 0.3)
            if rep:
                hp["received_from"] = rep["_from"]
                break
    out["hairpin"] = hp
    # Any mapped address equal to a local one means there is no NAT here.
    out["local_ips"] = local_ips()

    # TCP mapping from one local port to three server endpoints.
    lport = Udp().port  # a free-ish port number, reused for TCP
    out["tcp_local_port"] = lport
    out["tcp_mapping"] = [tcp_seen(lport, ep) for ep in eps[:3]]

    # TCP filtering: keep a connection's mapping, listen on its local port,
    # and ask the server to connect to the mapped port from S2 and from S1.
    tl = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tl.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    tl.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    tport = Udp().port
    tl.bind(("0.0.0.0", tport))
    tl.listen(8)
    tm = tcp_seen(tport, eps[0])
    out["tcp_filter_mapped"] = tm
    tf = {}
    if tm:
        mip, mport = split(tm)
        for name, ip in (("other_addr", s2), ("same_addr", s1)):
            rep = f.ask(eps[0], {"op": "syn", "from_ip": ip, "to_ip": mip, "to_port": mport,
                                 "timeout": 1.5}, timeout=4, tries=1)
            tf[name] = rep and rep.get("syn")
    out["tcp_filter"] = tf
    tl.close()

    # The NAT's answer to a SYN sent to a port nobody mapped.
    if out["filter_mapped"]:
        mip, _ = split(out["filter_mapped"])
        rep = f.ask(eps[0], {"op": "syn", "from_ip": s2, "to_ip": mip, "to_port": 9,
                             "timeout": 1.5}, timeout=4, tries=1)
        out["syn_answer"] = rep and rep.get("syn")
    print(json.dumps(out))


def rtt(args):
    """UDP echo round trips to a reflector: how many came back, how long they
    took.  The lab tests use it instead of ping, which is not a dependency."""
    ip, port = split(args.to)
    s = socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_DGRAM)
    sent_at = {}
    rtts = []
    def drain(until):
        while True:
            left = until - time.monotonic()
            r, _, _ = select.select([s], [], [], max(0, left))
            if not r:
                return
            data, _ = s.recvfrom(2048)
            try:
                n = int(json.loads(data)["nonce"])
            except (ValueError, KeyError, TypeError):
                continue
            if n in sent_at:
                rtts.append(time.monotonic() - sent_at.pop(n))
    for n in range(args.count):
        sent_at[n] = time.monotonic()
        s.sendto(json.dumps({"op": "echo", "nonce": str(n)}).encode(), (ip, port))
        drain(time.monotonic() + args.interval)
    drain(time.monotonic() + args.timeout)
    avg = sum(rtts) / len(rtts) * 1000 if rtts else -1
    print(json.dumps({"sent": args.count, "received": len(rtts), "avg_ms": round(avg, 2),
                      "loss_pct": round(100.0 * (args.count - len(rtts)) / args.count, 1)}))
    return 0 if rtts else 1


def local_ips():
    ips = []
    for line in os.popen("ip -4 -o addr show").read().splitlines():
        ips.append(line.split()[3].split("/")[0])
    return ips


# --------------------------------------------------------------------------
# classification (pure: observations in, names out)


def mapping_class(seen):
    """seen: mapped addresses for (S1:p1, S2:p1, S2:p2[, S1:p2])."""
    if any(x is None for x in seen):
        return "no-answer"
    if len(set(seen)) == 1:
        return "EIM"
    if seen[1] == seen[2]:
        return "ADM"
    return "APDM"


def port_of(ep):
    return int(ep.rsplit(":", 1)[1])


def allocation_class(obs):
    """How the NAT picks external ports: 'preserved' (the local port),
    'sequential+d' (each new mapping d after the previous) or 'random'."""
    pairs = [(obs["udp_local_port"], obs["udp_mapping"][0])]
    pairs += [(lp, m) for lp, m in obs["udp_fresh"]]
    if any(m is None for _, m in pairs):
        return "no-answer"
    if all(port_of(m) == lp for lp, m in pairs):
        return "preserved"
    # New mappings in creation order: for a symmetric NAT every destination
    # of the first socket is one, then each fresh socket.
    ports = [port_of(m) for m in obs["udp_mapping"]] if mapping_class(obs["udp_mapping"]) != "EIM" \
        else [port_of(obs["udp_mapping"][0])]
    ports += [port_of(m) for _, m in obs["udp_fresh"]]
    diffs = [b - a for a, b in zip(ports, ports[1:])]
    if diffs:
        common = max(set(diffs), key=diffs.count)
        if common != 0 and diffs.count(common) >= max(2, len(diffs) - 1):
            return "sequential%+d" % common
    return "random"


def filtering_class(got):
    if got["other_addr"]:
        return "EIF"
    if got["other_port"]:
        return "ADF"
    return "APDF"


def tcp_filtering_class(tf):
    if not tf:
        return "no-answer"
    if tf.get("other_addr") == "connected":
        return "EIF"
    if tf.get("same_addr") == "connected":
        return "ADF"
    return "APDF"


def classify(obs):
    """Returns the table row (a dict) for one client's observations."""
    public = obs["filter_mapped"] and obs["filter_mapped"].rsplit(":", 1)[0] in obs["local_ips"]
    row = {}
    um = mapping_class(obs["udp_mapping"])
    tm = mapping_class(obs["tcp_mapping"])
    if public:
        um = tm = "none"
    row["mapping"] = um if um == tm else "udp:%s tcp:%s" % (um, tm)
    uf = filtering_class(obs["udp_filter"])
    tf = tcp_filtering_class(obs["tcp_filter"])
    row["filtering"] = uf if uf == tf else "udp:%s tcp:%s" % (uf, tf)
    row["allocation"] = allocation_class(obs)
    row["syn"] = obs.get("syn_answer") or "no-answer"
    # Where the filter refuses a SYN to a live mapping (the case that decides
    # simultaneous open), the answer must be the same as for a closed port.
    mapped = (obs.get("tcp_filter") or {}).get("other_addr")
    if mapped not in (None, "connected") and mapped != row["syn"]:
        row["syn"] += " (to a mapping: %s)" % mapped
    hp = obs["hairpin"]
    if public:
        row["hairpin"] = "n/a"
    elif hp["received_from"] is None:
        row["hairpin"] = "off"
    elif hp["received_from"] == hp["m1"]:
        row["hairpin"] = "on"
    else:
        row["hairpin"] = "on (src %s)" % hp["received_from"]
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--ips", required=True)
    s.add_argument("--ports", default="3478,3479")
    s.add_argument("--duration", type=float, default=600)
    c = sub.add_parser("client")
    c.add_argument("--server", required=True, help="S1,S2")
    c.add_argument("--ports", default="3478,3479")
    c.add_argument("--port", type=int, default=0, help="local port of the mapping test (default: any)")
    r = sub.add_parser("rtt")
    r.add_argument("--to", required=True, help="IP:PORT of a reflector")
    r.add_argument("--count", type=int, default=5)
    r.add_argument("--interval", type=float, default=0.1)
    r.add_argument("--timeout", type=float, default=1.0, help="wait for stragglers")
    args = ap.parse_args()
    if args.cmd == "serve":
        serve(args)
    elif args.cmd == "rtt":
        sys.exit(rtt(args))
    else:
        client(args)


if __name__ == "__main__":
    main()
