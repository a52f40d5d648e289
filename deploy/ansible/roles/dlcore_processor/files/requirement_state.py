"""Whether a pip requirement is installed as the role wants it; prints one JSON object.

Run with the processor environment's python:  python requirement_state.py SPEC [LOCAL_LABEL]

* ``state``: ``satisfied``, ``missing`` (not installed or the version does not match), or
  ``other-build`` (the version matches but its local label is not LOCAL_LABEL: PEP 440 lets
  ``torch==2.13.0`` accept 2.13.0+cpu and 2.13.0+cu128 alike, so the label is compared here);
* ``found``: the installed version, or null;
* ``install``: the requirement to give pip so that it installs the wanted build (``torch==2.13.0``
  with label ``cu128`` becomes ``torch==2.13.0+cu128``, which pip does not consider satisfied by
  2.13.0+cpu).

A label needs an exact ``==`` pin; anything else exits non-zero with a message that says so.
"""
import importlib.metadata as metadata
import json
import sys

from pip._vendor.packaging.requirements import Requirement
from pip._vendor.packaging.version import Version


def main(argv):
    spec, label = argv[1], (argv[2] if len(argv) > 2 else "")
    wanted = Requirement(spec)
    install = spec
    if label:
        pins = [s for s in wanted.specifier if s.operator == "=="]
        if len(pins) != 1 or len(list(wanted.specifier)) != 1 or wanted.url:
            sys.exit(f"{spec!r}: a build label ({label}) needs one exact pin, e.g. '{wanted.name}==2.13.0'")
        base = pins[0].version.split("+")[0]
        install = f"{wanted.name}{'[' + ','.join(sorted(wanted.extras)) + ']' if wanted.extras else ''}=={base}+{label}"
    try:
        found = metadata.version(wanted.name)
    except metadata.PackageNotFoundError:
        found = None
    if found is None or not wanted.specifier.contains(found, prereleases=True):
        state = "missing"
    elif label and Version(found).local != label:
        state = "other-build"
    else:
        state = "satisfied"
    print(json.dumps({"state": state, "found": found, "install": install}))


if __name__ == "__main__":
    main(sys.argv)
