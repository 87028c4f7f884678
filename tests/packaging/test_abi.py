# test_abi.py: the ABI of libntcp.so against the baseline abi/ntcp.abi
# (abidiff, Debian abigail-tools, with abi/ntcp.abignore). Passes when
# nothing changed or functions were only added; fails on a removed or
# changed function or type unless the SONAME moved (then the baseline is to
# be written again: scripts/abi-dump.sh). First, as a control, a baseline
# with one function taken out must read as a removal.
# usage: test_abi.py --source SOURCE_DIR --library LIBNTCP.SO
import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "interop"))
import interop  # noqa: E402
from interop import check, log  # noqa: E402


def soname_of_dump(path):
    m = re.search(r"soname='([^']+)'", open(path).read(4096))
    return m.group(1) if m else ""


def soname_of_lib(path):
    out = subprocess.run(["readelf", "-d", path], capture_output=True, text=True).stdout
    m = re.search(r"Library soname: \[([^\]]+)\]", out)
    return m.group(1) if m else ""


def compare(old, new, source, headers):
    """abidiff old new: (verdict, report). verdict: "same", "added",
    "incompatible" or "error"."""
    argv = ["abidiff", "--suppressions", os.path.join(source, "abi", "ntcp.abignore"), old, new]
    if headers:
        argv += ["--headers-dir2", os.path.join(source, "include")]
    r = subprocess.run(argv, capture_output=True, text=True)
    report = r.stdout + r.stderr
    if r.returncode & 3:
        return "error", report
    if r.returncode == 0:
        return "same", report
    counts = re.findall(r"(\d+) Removed, (\d+) Changed", report)
    if counts and all(int(rm) == 0 and int(ch) == 0 for rm, ch in counts) and not r.returncode & 8:
        return "added", report
    return "incompatible", report


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--source", required=True)
    p.add_argument("--library", required=True)
    a = p.parse_args()
    for tool in ("abidiff", "readelf"):
        if not shutil.which(tool):
            interop.skip("%s is not installed (Debian abigail-tools, binutils)" % tool)
    lib = os.path.realpath(a.library)
    if not os.path.exists(lib):
        interop.skip("libntcp.so is not built (%s)" % lib)
    sections = subprocess.run(["readelf", "-S", lib], capture_output=True, text=True).stdout
    if ".debug_info" not in sections:
        interop.skip("libntcp.so has no debug information (build type without -g)")
    baseline = os.path.join(a.source, "abi", "ntcp.abi")

    # The control: the baseline without ntcp_version() is a removal.
    tmp = tempfile.mkdtemp(prefix="ntcp-abi-")
    try:
        text = open(baseline).read()
        cut = re.sub(r"\n *<elf-symbol name='ntcp_version'[^\n]*/>", "", text)
        cut = re.sub(r"\n *<function-decl name='ntcp_version'.*?</function-decl>", "", cut,
                     flags=re.S)
        control = os.path.join(tmp, "cut.abi")
        with open(control, "w") as f:
            f.write(cut)
        verdict, report = compare(baseline, control, a.source, headers=False)
        check(cut != text and verdict == "incompatible",
              "control: a baseline without ntcp_version() reads as incompatible (%s)" % verdict,
              report[-600:])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    verdict, report = compare(baseline, lib, a.source, headers=True)
    log(report.strip())
    old, new = soname_of_dump(baseline), soname_of_lib(lib)
    log("baseline %s, built %s: %s" % (old, new, verdict))
    if verdict == "incompatible" and old != new:
        log("the SONAME moved with the change: write the baseline again (scripts/abi-dump.sh)")
        verdict = "same"
    check(verdict in ("same", "added"),
          "libntcp's ABI is compatible with abi/ntcp.abi (%s)" % verdict,
          "an incompatible change needs NTCP_SOVERSION raised in CMakeLists.txt")
    interop.finish()


if __name__ == "__main__":
    main()
