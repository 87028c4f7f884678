"""_ntcp_build.py: the package's PEP 517 build backend. The package is a few
pure-Python files, so a wheel is a zip of them with its metadata; a backend
of its own needs nothing from the network, so `pip install ./python` works
offline, without setuptools and without --no-build-isolation. Name,
version, summary and Python version come from pyproject.toml's [project]."""

import base64
import hashlib
import io
import os
import re
import tarfile
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))


def _project():
    text = open(os.path.join(HERE, "pyproject.toml"), encoding="utf-8").read()
    section = text.split("[project]", 1)[1].split("\n[", 1)[0]

    def field(key):
        m = re.search(r'^%s\s*=\s*"([^"]*)"' % key, section, re.M)
        return m.group(1) if m else ""
    return {"name": field("name"), "version": field("version"),
            "summary": field("description"), "python": field("requires-python")}


def _metadata(p):
    return ("Metadata-Version: 2.1\nName: %s\nVersion: %s\nSummary: %s\n"
            "Requires-Python: %s\nProvides-Extra: twisted\n"
            "Requires-Dist: twisted; extra == \"twisted\"\n"
            % (p["name"], p["version"], p["summary"], p["python"]))


def _sources():
    """(path in the archive, path on disk) of the package's modules."""
    pkg = os.path.join(HERE, "ntcp")
    return sorted(("ntcp/" + f, os.path.join(pkg, f)) for f in os.listdir(pkg)
                  if f.endswith(".py"))


def get_requires_for_build_wheel(config_settings=None):
    return []


def get_requires_for_build_sdist(config_settings=None):
    return []


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    p = _project()
    dist_info = "%s-%s.dist-info" % (p["name"], p["version"])
    name = "%s-%s-py3-none-any.whl" % (p["name"], p["version"])
    files = [(arc, open(path, "rb").read()) for arc, path in _sources()]
    files.append((dist_info + "/METADATA", _metadata(p).encode()))
    files.append((dist_info + "/WHEEL", b"Wheel-Version: 1.0\nGenerator: _ntcp_build\n"
                  b"Root-Is-Purelib: true\nTag: py3-none-any\n"))
    record = io.StringIO()
    for arc, data in files:
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.write("%s,sha256=%s,%d\n" % (arc, digest, len(data)))
    record.write("%s/RECORD,,\n" % dist_info)
    files.append((dist_info + "/RECORD", record.getvalue().encode()))
    with zipfile.ZipFile(os.path.join(wheel_directory, name), "w", zipfile.ZIP_DEFLATED) as z:
        for arc, data in files:
            z.writestr(arc, data)
    return name


def build_sdist(sdist_directory, config_settings=None):
    p = _project()
    base = "%s-%s" % (p["name"], p["version"])
    name = base + ".tar.gz"
    with tarfile.open(os.path.join(sdist_directory, name), "w:gz") as t:
        for f in ("pyproject.toml", "README.md", "_ntcp_build.py"):
            t.add(os.path.join(HERE, f), base + "/" + f)
        for arc, path in _sources():
            t.add(path, base + "/" + arc)
        info = tarfile.TarInfo(base + "/PKG-INFO")
        data = _metadata(p).encode()
        info.size = len(data)
        t.addfile(info, io.BytesIO(data))
    return name
