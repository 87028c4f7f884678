# test_services.py: the servers as services. Installs the build into a
# temporary prefix and checks the systemd units there with
# `systemd-analyze verify` (man pages found under the prefix too) and
# prints `systemd-analyze security` exposure (which must stay "OK": below
# 3.0); runs the installed ntcp-stuntd with the example configuration
# (addresses moved to loopback) until it answers; checks the journal form of
# the logs (a priority prefix, no timestamp, when $JOURNAL_STREAM names
# standard error; a timestamp otherwise; never an escape sequence); and
# that SIGHUP, the units' reload, makes ntcp-brokerd re-read its keys and
# keep running. Servers are stopped by PID.
# usage: test_services.py --build BUILD_DIR
import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "interop"))
sys.path.insert(0, os.path.join(HERE, "..", "install"))
import interop  # noqa: E402
from interop import check, log, run  # noqa: E402
from test_install import install  # noqa: E402


def units(prefix):
    unitdir = os.path.join(prefix, "lib", "systemd", "system")
    found = [os.path.join(unitdir, u) for u in ("ntcp-stuntd.service", "ntcp-brokerd.service")]
    for u in found:
        check(os.path.exists(u), "installed " + os.path.relpath(u, prefix))
    if not shutil.which("systemd-analyze"):
        log("(systemd-analyze is not installed: the units are not verified)")
        return
    env = dict(os.environ, MANPATH=os.path.join(prefix, "share", "man"))
    p = subprocess.run(["systemd-analyze", "verify"] + found, capture_output=True, text=True,
                       env=env)
    log(p.stdout + p.stderr)
    check(p.returncode == 0 and not p.stderr.strip(), "systemd-analyze verify: no complaint")
    for u in found:
        p = subprocess.run(["systemd-analyze", "security", "--offline=yes", u],
                           capture_output=True, text=True)
        m = re.search(r"Overall exposure level for \S+: ([0-9.]+) (\w+)", p.stdout)
        log("%s exposure: %s" % (os.path.basename(u), m.group(0) if m else p.stderr.strip()))
        if m:
            check(float(m.group(1)) < 3.0, "%s: exposure %s below 3.0"
                  % (os.path.basename(u), m.group(1)))


def stuntd_example(prefix, tmp):
    conf = open(os.path.join(prefix, "share", "doc", "ntcp", "examples",
                             "ntcp-stuntd.conf")).read()
    port = interop.free_ports(2)
    conf = (conf.replace("192.0.2.10", interop.IP1).replace("192.0.2.11", interop.IP2)
            .replace("= 3478", "= %d" % port).replace("= 3479", "= %d" % (port + 1)))
    path = os.path.join(tmp, "ntcp-stuntd.conf")
    with open(path, "w") as f:
        f.write(conf)
    srv = interop.Server("stuntd-example", [os.path.join(prefix, "bin", "ntcp-stuntd"),
                                            "--config", path], tmp)
    try:
        interop.wait_ready(srv, udp=[(interop.IP1, port), (interop.IP2, port + 1)],
                           tcp=[(interop.IP1, port)])
        check(True, "ntcp-stuntd answers with the example configuration")
    except RuntimeError as e:
        check(False, "ntcp-stuntd answers with the example configuration", str(e))
    return srv


def journal_logs(prefix, tmp):
    brokerd = os.path.join(prefix, "bin", "ntcp-brokerd")
    stuntd = os.path.join(prefix, "bin", "ntcp-stuntd")
    for journal in (False, True):
        for name, argv, ready in (
                ("brokerd", [brokerd, "--listen", "127.0.0.1:0", "--stats", "0"], "listening on"),
                ("stuntd", [stuntd, "--primary", "127.0.0.1:0", "--alternate", "127.0.0.2:0"],
                 "listening on")):
            out = os.path.join(tmp, "%s-%s.err" % (name, journal))
            with open(out, "wb") as f:
                env = dict(os.environ)
                env.pop("JOURNAL_STREAM", None)
                if journal:
                    st = os.fstat(f.fileno())
                    env["JOURNAL_STREAM"] = "%d:%d" % (st.st_dev, st.st_ino)
                p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=f, env=env,
                                     stdin=subprocess.DEVNULL)
            try:
                end = time.monotonic() + 15
                while time.monotonic() < end and ready not in open(out).read():
                    time.sleep(0.05)  # polling its log, with a deadline
            finally:
                p.send_signal(signal.SIGTERM)
                p.wait(10)
            lines = open(out).read().splitlines()
            what = "%s, %s" % (name, "journal" if journal else "file")
            check(len(lines) >= 2, "%s: lines logged (%d)" % (what, len(lines)))
            check(not any("\x1b" in l for l in lines), "%s: no escape sequences" % what)
            if journal:
                bad = [l for l in lines if not re.match(r"<[3467]>ntcp-\w+ (error|warning|info|debug): ", l)]
            else:
                bad = [l for l in lines if not re.match(
                    r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{3})?Z ntcp-\w+ (error|warning|info|debug): ", l)]
            check(not bad, "%s: every line has the form of its destination" % what, repr(bad[:2]))


def reload_brokerd(prefix, tmp):
    keys = os.path.join(tmp, "authorized_keys")
    open(keys, "w").close()
    port = interop.free_port()
    srv = interop.Server("brokerd-reload", [os.path.join(prefix, "bin", "ntcp-brokerd"),
                                            "--listen", "127.0.0.1:%d" % port,
                                            "--authorized-keys", keys, "--stats", "0"], tmp)
    check(interop.wait_output(srv, "listening on", 15), "ntcp-brokerd starts with --authorized-keys")
    os.kill(srv.pid, signal.SIGHUP)  # what ExecReload does
    check(interop.wait_output(srv, r"info: reloaded$", 15) and srv.alive(),
          "SIGHUP: ntcp-brokerd reloads and keeps running", srv.output()[-400:])


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--build", required=True)
    a = p.parse_args()
    with interop.Workdir() as tmp:
        prefix = os.path.join(tmp, "prefix")
        install(a.build, prefix)
        units(prefix)
        stuntd_example(prefix, tmp)
        journal_logs(prefix, tmp)
        reload_brokerd(prefix, tmp)
    interop.finish()


if __name__ == "__main__":
    main()
