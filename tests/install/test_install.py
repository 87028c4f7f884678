# test_install.py: libntcp used the way a user's program uses it. Installs the
# build into a temporary prefix (cmake --install --prefix), checks what is
# there (programs, libraries with their SONAME, header, ntcp.pc, CMake
# package, man pages) and that libntcp.so exports exactly the functions of
# the installed ntcp.h, and libntcp.a defines exactly those as global; builds examples/echo.c out of tree once with
# pkg-config and once with find_package(ntcp) (shared and static), and runs
# them through the installed ntcp-brokerd on 127.0.0.1: an echo served by
# one build answers the others; then `pip install ./python` in a bare venv
# (offline), and a
# Python client of the installed library gets its echo too. Servers are
# stopped by PID.
# usage: test_install.py --build BUILD_DIR --source SOURCE_DIR
import argparse
import os
import re
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "interop"))
import interop  # noqa: E402  (Server, run, check, skip, free_port, Workdir)
from interop import check, log, run  # noqa: E402


def install(build, prefix):
    rc, out, err = run(["cmake", "--install", build, "--prefix", prefix])
    if rc != 0:
        raise RuntimeError("cmake --install failed")


def libdir_of(prefix):
    """The directory that holds libntcp.so (lib, or lib/<multiarch>)."""
    for root, _dirs, files in os.walk(prefix):
        if "libntcp.a" in files:
            return root
    raise RuntimeError("no libntcp.a under " + prefix)


def exported(lib):
    out = subprocess.run(["nm", "-D", "--defined-only", lib], capture_output=True,
                         text=True, check=True).stdout
    return sorted(line.split()[-1] for line in out.splitlines() if line.strip())


def static_globals(archive):
    """The global symbols the archive defines."""
    out = subprocess.run(["nm", "-g", "--defined-only", archive], capture_output=True,
                         text=True, check=True).stdout
    return sorted(line.split()[-1] for line in out.splitlines()
                  if len(line.split()) == 3)


def declared(header):
    """The functions ntcp.h declares: (all of them, those not marked
    NTCP_EXPORT)."""
    text = open(header).read()
    decls = re.findall(r"^(NTCP_EXPORT )?(?!typedef|struct|#)[a-z][^(;]*?\b(ntcp_[a-z0-9_]+)\(",
                       text, re.M)
    return sorted({n for _, n in decls}), sorted({n for e, n in decls if not e})


def soname(lib):
    out = subprocess.run(["readelf", "-d", lib], capture_output=True, text=True).stdout
    m = re.search(r"Library soname: \[([^\]]+)\]", out)
    return m.group(1) if m else ""


def needed(prog):
    out = subprocess.run(["readelf", "-d", prog], capture_output=True, text=True).stdout
    return re.findall(r"Shared library: \[([^\]]+)\]", out)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--build", required=True)
    p.add_argument("--source", required=True)
    a = p.parse_args()
    for tool in ("cmake", "pkg-config", "cc", "nm", "readelf"):
        if not shutil.which(tool):
            interop.skip("%s is not installed" % tool)
    with interop.Workdir() as tmp:
        prefix = os.path.join(tmp, "prefix")
        install(a.build, prefix)
        lib = libdir_of(prefix)
        so = os.path.join(lib, "libntcp.so")
        for rel in ("bin/ntcp", "bin/ntcp-stuntd", "bin/ntcp-brokerd", "include/ntcp.h",
                    "share/man/man1/ntcp.1", "share/man/man3/ntcp.3",
                    "share/man/man8/ntcp-stuntd.8", "share/man/man8/ntcp-brokerd.8"):
            check(os.path.exists(os.path.join(prefix, rel)), "installed " + rel)
        for f in ("libntcp.a", "libntcp.so", "pkgconfig/ntcp.pc", "cmake/ntcp/ntcpConfig.cmake",
                  "cmake/ntcp/ntcpConfigVersion.cmake", "cmake/ntcp/ntcpTargets.cmake"):
            check(os.path.exists(os.path.join(lib, f)), "installed <libdir>/" + f)
        name = soname(so)
        check(re.fullmatch(r"libntcp\.so\.\d+", name) is not None, "SONAME libntcp.so.N", name)
        check(os.path.islink(so) and os.path.exists(os.path.join(lib, name)),
              "libntcp.so links to the SONAME file")
        exp, (decl, unmarked) = exported(so), declared(os.path.join(prefix, "include", "ntcp.h"))
        check(not unmarked, "every function of ntcp.h is marked NTCP_EXPORT", repr(unmarked))
        check(len(decl) > 30 and exp == decl,
              "libntcp.so exports exactly the %d functions of ntcp.h" % len(decl),
              "only exported: %s; only declared: %s" % (sorted(set(exp) - set(decl)),
                                                        sorted(set(decl) - set(exp))))

        # The static library: the same public names, nothing internal.
        st = static_globals(os.path.join(lib, "libntcp.a"))
        check(st == exp, "libntcp.a defines exactly the %d public functions as global" % len(exp),
              "only in libntcp.a: %s; only in the .so: %s" % (sorted(set(st) - set(exp))[:10],
                                                               sorted(set(exp) - set(st))[:10]))

        # A user's program, built with pkg-config.
        env = dict(os.environ, PKG_CONFIG_PATH=os.path.join(lib, "pkgconfig"))
        pc = subprocess.run(["pkg-config", "--cflags", "--libs", "ntcp"], env=env,
                            capture_output=True, text=True)
        check(pc.returncode == 0 and prefix in pc.stdout, "pkg-config finds ntcp under the prefix",
              pc.stdout + pc.stderr)
        mod = subprocess.run(["pkg-config", "--modversion", "ntcp"], env=env,
                             capture_output=True, text=True).stdout.strip()
        check(re.fullmatch(r"\d+\.\d+\.\d+", mod) is not None, "pkg-config --modversion " + mod)
        echo_pc = os.path.join(tmp, "echo-pc")
        rc, _, _ = run(["cc", "-std=c17", "-Wall", "-Werror", "-o", echo_pc,
                        os.path.join(a.source, "examples", "echo.c")] + pc.stdout.split()
                       + ["-Wl,-rpath," + lib])
        check(rc == 0, "echo.c builds with pkg-config")

        # The same program, with find_package(ntcp) in its own CMake project.
        exb = os.path.join(tmp, "examples-build")
        rc1, _, _ = run(["cmake", "-S", os.path.join(a.source, "examples"), "-B", exb,
                         "-DCMAKE_PREFIX_PATH=" + prefix, "-DCMAKE_C_FLAGS=-Werror"])
        rc2, _, _ = run(["cmake", "--build", exb]) if rc1 == 0 else (1, "", "")
        check(rc1 == 0 and rc2 == 0, "examples/ builds with find_package(ntcp)")
        echo_cm, echo_st = os.path.join(exb, "echo"), os.path.join(exb, "echo-static")
        if os.path.exists(echo_pc):
            check(name in needed(echo_pc), "the pkg-config build needs " + name)
        if os.path.exists(echo_cm):
            check(name in needed(echo_cm), "the find_package build needs " + name)
        if os.path.exists(echo_st):
            check(not any(n.startswith("libntcp") for n in needed(echo_st)),
                  "ntcp::ntcp_static links libntcp.a")
        if not all(os.path.exists(x) for x in (echo_pc, echo_cm, echo_st)):
            interop.finish()

        # They run against the installed broker: bob (pkg-config build)
        # serves, alice (find_package, shared) and carol (static) connect.
        _, broker = interop.start_brokerd(os.path.join(prefix, "bin", "ntcp-brokerd"), tmp)
        bob = interop.Server("echo-bob", [echo_pc, "serve", "bob", broker, "-"], tmp)
        check(interop.wait_output(bob, "registered as bob", 30), "echo (pkg-config build) registers as bob",
              bob.output())
        for who, prog in (("alice", echo_cm), ("carol", echo_st)):
            msg = "hello from %s %d" % (who, os.getpid())
            rc, out, _ = run([prog, "connect", who, broker, "-", "bob", msg], timeout=60)
            check(rc == 0 and ("echo from bob: " + msg) in out,
                  "%s (%s) gets its message echoed by bob" % (who, os.path.basename(prog)))
        python_package(a.source, tmp, lib, broker)
    interop.finish()


PY_CLIENT = """
import socket, sys, ntcp
with ntcp.Context(broker=sys.argv[1], name="dave", key_file="dave.key") as ctx:
    sock, info = ctx.connect("bob", timeout=30)
    sock.sendall(sys.argv[2].encode())
    sock.shutdown(socket.SHUT_WR)
    got = b""
    while True:
        b = sock.recv(4096)
        if not b:
            break
        got += b
    print("echo:", got.decode(), "method:", info.method, "lib:", ntcp.version())
"""


def python_package(source, tmp, lib, broker):
    """pip install ./python into a bare venv, offline (the package builds
    with its own backend and depends on nothing), and a Python client of the
    installed libntcp, found by the loader, talks to the C echo server."""
    if subprocess.run(["/usr/bin/python3", "-c", "import venv, ensurepip"],
                      capture_output=True).returncode != 0:
        log("(no venv or ensurepip: the Python package is not checked)")
        return
    venv = os.path.join(tmp, "venv")
    rc, _, _ = run(["/usr/bin/python3", "-m", "venv", venv])
    # A copy, so that the build leaves nothing in the source tree.
    src = os.path.join(tmp, "python-src")
    shutil.copytree(os.path.join(source, "python"), src,
                    ignore=shutil.ignore_patterns("__pycache__", "tests"))
    rc2, _, _ = run([os.path.join(venv, "bin", "pip"), "install", "--no-index", src],
                    timeout=180)
    check(rc == 0 and rc2 == 0, "pip install ./python in a venv, offline")
    env = dict(os.environ, LD_LIBRARY_PATH=lib)
    env.pop("NTCP_LIBRARY", None)
    msg = "hello from python %d" % os.getpid()
    log("$ venv/bin/python -c PY_CLIENT " + broker)
    p = subprocess.run([os.path.join(venv, "bin", "python"), "-c", PY_CLIENT, broker, msg],
                       capture_output=True, text=True, env=env, cwd=tmp, timeout=60)
    log(p.stdout + p.stderr)
    check(p.returncode == 0 and ("echo: " + msg) in p.stdout,
          "the installed package's client gets its message echoed by bob")
    where = subprocess.run([os.path.join(venv, "bin", "python"), "-c",
                            "import ntcp; print(ntcp.__file__)"],
                           capture_output=True, text=True, env=env, cwd=tmp).stdout
    check(where.startswith(venv), "ntcp is imported from the venv (%s)" % where.strip())
    rc, _, _ = run([os.path.join(venv, "bin", "pip"), "uninstall", "-y", "ntcp"])
    gone = subprocess.run([os.path.join(venv, "bin", "python"), "-c", "import ntcp"],
                          capture_output=True, cwd=tmp).returncode != 0
    check(rc == 0 and gone, "pip uninstall ntcp removes it")


if __name__ == "__main__":
    main()
