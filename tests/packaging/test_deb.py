# test_deb.py: the Debian packages. Copies the source tree (the files git
# knows, committed or not) to a temporary directory, builds the binary
# packages there with `dpkg-buildpackage -b -us -uc`, runs lintian on them
# (any error fails; warnings are printed) and checks what each package
# holds. Prints how long the build and lintian took (figures, not
# assertions). Skipped (77) without dpkg-buildpackage, debhelper or lintian.
# usage: test_deb.py --source SOURCE_DIR
import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "interop"))
import interop  # noqa: E402
from interop import check, log  # noqa: E402

# Paths (regular expressions) each package must hold.
EXPECTED = {
    "libntcp0": [r"usr/lib/[^/]+/libntcp\.so\.0$", r"usr/lib/[^/]+/libntcp\.so\.0\.\d+\.\d+$"],
    "libntcp-dev": [r"usr/include/ntcp\.h$", r"usr/lib/[^/]+/libntcp\.so$",
                    r"usr/lib/[^/]+/libntcp\.a$", r"usr/lib/[^/]+/pkgconfig/ntcp\.pc$",
                    r"usr/lib/[^/]+/cmake/ntcp/ntcpConfig\.cmake$",
                    r"usr/share/man/man3/ntcp\.3\.gz$"],
    "ntcp": [r"usr/bin/ntcp$", r"usr/share/man/man1/ntcp\.1\.gz$"],
    "ntcp-servers": [r"usr/bin/ntcp-stuntd$", r"usr/bin/ntcp-brokerd$",
                     r"lib/systemd/system/ntcp-stuntd\.service$",
                     r"lib/systemd/system/ntcp-brokerd\.service$",
                     r"etc/default/ntcp-brokerd$", r"etc/default/ntcp-stuntd$",
                     r"usr/share/man/man8/ntcp-stuntd\.8\.gz$"],
    "python3-ntcp": [r"usr/lib/python3/dist-packages/ntcp/__init__\.py$",
                     r"usr/lib/python3/dist-packages/ntcp/_lib\.py$",
                     r"usr/lib/python3/dist-packages/ntcp/twisted\.py$"],
}


def source_files(src):
    try:
        out = subprocess.run(["git", "-C", src, "ls-files", "-co", "--exclude-standard", "-z"],
                             capture_output=True, check=True).stdout
        return [f for f in out.decode().split("\0") if f]
    except (OSError, subprocess.CalledProcessError):
        files = []
        for root, dirs, names in os.walk(src):
            dirs[:] = [d for d in dirs if not d.startswith(("build", ".git"))]
            files += [os.path.relpath(os.path.join(root, n), src) for n in names]
        return files


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--source", required=True)
    a = p.parse_args()
    for tool in ("dpkg-buildpackage", "dh", "lintian", "dpkg-deb"):
        if not shutil.which(tool):
            interop.skip("%s is not installed (scripts/install-deps.sh)" % tool)
    tmp = tempfile.mkdtemp(prefix="ntcp-deb-")
    try:
        tree = os.path.join(tmp, "ntcp")
        for f in source_files(a.source):
            if os.path.isfile(os.path.join(a.source, f)):
                os.makedirs(os.path.dirname(os.path.join(tree, f)), exist_ok=True)
                shutil.copy2(os.path.join(a.source, f), os.path.join(tree, f))
        env = dict(os.environ, DEB_BUILD_OPTIONS="parallel=%d" % min(2, os.cpu_count() or 1))
        t0 = time.monotonic()
        r = subprocess.run(["dpkg-buildpackage", "-b", "-us", "-uc"], cwd=tree, env=env,
                           capture_output=True, text=True)
        t_build = time.monotonic() - t0
        if not check(r.returncode == 0, "dpkg-buildpackage -b -us -uc"):
            log((r.stdout + r.stderr)[-4000:])
            interop.finish()
        debs = {}
        for f in os.listdir(tmp):
            m = re.match(r"([a-z0-9.+-]+?)_[^_]+_[^_]+\.deb$", f)
            if m and not m.group(1).endswith("-dbgsym"):
                debs[m.group(1)] = os.path.join(tmp, f)
        check(sorted(debs) == sorted(EXPECTED), "the packages: %s" % ", ".join(sorted(debs)))
        for pkg, patterns in EXPECTED.items():
            if pkg not in debs:
                continue
            listing = subprocess.run(["dpkg-deb", "-c", debs[pkg]], capture_output=True,
                                     text=True).stdout
            paths = [line.split()[5].lstrip("./") for line in listing.splitlines()]
            missing = [pat for pat in patterns if not any(re.match(pat, x) for x in paths)]
            check(not missing, "%s holds what it should" % pkg, "missing %s" % missing)
        if "libntcp-dev" in debs and "libntcp0" in debs:
            # The -dev's static library defines what the shared one exports, nothing more.
            root = os.path.join(tmp, "root-dev")
            for pkg in ("libntcp-dev", "libntcp0"):
                subprocess.run(["dpkg-deb", "-x", debs[pkg], root], check=True)
            found = {f: os.path.join(dp, f) for dp, _, fs in os.walk(root) for f in fs
                     if f in ("libntcp.a", "libntcp.so.0")}

            def names(argv):
                out = subprocess.run(argv, capture_output=True, text=True).stdout
                return sorted(l.split()[-1] for l in out.splitlines() if len(l.split()) == 3)
            st = names(["nm", "-g", "--defined-only", found.get("libntcp.a", "/dev/null")])
            so = names(["nm", "-D", "--defined-only", found.get("libntcp.so.0", "/dev/null")])
            check(len(so) > 30 and st == so,
                  "libntcp-dev's libntcp.a defines only libntcp0's %d exports" % len(so),
                  "only in the archive: %s" % sorted(set(st) - set(so))[:10])
        if "python3-ntcp" in debs and "libntcp0" in debs:
            # The packaged module loads the packaged library, unpacked side by side.
            root = os.path.join(tmp, "root")
            for pkg in ("libntcp0", "python3-ntcp"):
                subprocess.run(["dpkg-deb", "-x", debs[pkg], root], check=True)
            libdir = [os.path.join(dp) for dp, _, fs in os.walk(root) if "libntcp.so.0" in fs]
            env = dict(os.environ, PYTHONPATH=os.path.join(root, "usr/lib/python3/dist-packages"),
                       LD_LIBRARY_PATH=libdir[0] if libdir else "")
            env.pop("NTCP_LIBRARY", None)
            r = subprocess.run(["/usr/bin/python3", "-c", "import ntcp, ntcp.aio; "
                                "print(ntcp.__file__, ntcp.version())"],
                               capture_output=True, text=True, env=env, cwd=tmp)
            check(r.returncode == 0 and r.stdout.startswith(root),
                  "python3-ntcp imports and loads libntcp0's library", r.stdout + r.stderr)
        changes = [f for f in os.listdir(tmp) if f.endswith(".changes")]
        t0 = time.monotonic()
        r = subprocess.run(["lintian", "--fail-on", "error", os.path.join(tmp, changes[0])],
                           capture_output=True, text=True)
        t_lintian = time.monotonic() - t0
        tags = [l for l in r.stdout.splitlines() if re.match(r"[EWIXP]: ", l)]
        for t in tags:
            log("  lintian " + t)
        errors = [t for t in tags if t.startswith("E: ")]
        warnings = [t for t in tags if t.startswith("W: ")]
        check(r.returncode == 0 and not errors, "lintian: no error (%d warning(s))" % len(warnings),
              r.stderr[-1000:])
        log("time: dpkg-buildpackage %.0f s, lintian %.0f s" % (t_build, t_lintian))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    interop.finish()


if __name__ == "__main__":
    main()
