#!/usr/bin/python3
"""Summarises ctest JUnit reports: prints each skipped test with the reason it
gave, each failed test, and a closing line "N passed, N failed, N skipped"."""
import sys
import xml.etree.ElementTree as ET


def main(argv):
    extra_failed = 0
    files = []
    it = iter(argv)
    for a in it:
        if a == "--extra-failed":
            extra_failed = int(next(it))
        else:
            files.append(a)
    passed = failed = skipped = 0
    for f in files:
        try:
            root = ET.parse(f).getroot()
        except (OSError, ET.ParseError) as e:
            print(f"summary: cannot read {f}: {e}")
            failed += 1
            continue
        suite = f.split("/")[0]
        for case in root.iter("testcase"):
            name = f"{suite}: {case.get('name')}"
            out = (case.findtext("system-out") or "").strip().splitlines()
            if case.find("skipped") is not None:
                skipped += 1
                reason = next((l for l in out if "skip" in l.lower()), out[-1] if out else "no reason given")
                print(f"SKIPPED {name}: {reason.strip()}")
            elif case.find("failure") is not None or case.find("error") is not None:
                failed += 1
                print(f"FAILED  {name}")
            else:
                passed += 1
    failed += extra_failed
    if extra_failed:
        print("FAILED  fuzzing (see above)")
    else:
        passed += 1  # the fuzzing run counts as one check
    print(f"{passed} passed, {failed} failed, {skipped} skipped")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
