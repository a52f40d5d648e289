#!/usr/bin/env python3
"""A stand-in for OMERO's ``bin/omero`` in the deployment sandbox, as strict as the real one where
the roles depend on it.

Configuration lives in ``$OMERODIR/etc/fake-config.json`` (the real CLI: ``etc/grid/config.xml``).
Every call is logged to ``$OMERODIR/omero-calls.log``.  Supported, with omero-py's behaviour:

* ``config get KEY`` (prints nothing for an unset key), ``config set [--] KEY VALUE``,
  ``config drop default`` (what ome.omero_server's ``00-omero-server.omero`` starts with: every
  key is gone);
* ``load FILE...`` and ``load --glob PATTERN...`` (``plugins/basics.py``): the files' lines are CLI
  commands, shlex-split, comment lines skipped, globs expanded and sorted; without ``-k`` the
  first failing line fails the load;
* ``admin rewrite``: ``etc/templates/ice.config`` is rendered over ``etc/ice.config`` with
  ``@omero.master.host@`` replaced by ``omero.master.host`` (``localhost`` when unset), and
  ``etc/internal.cfg`` (the registry's locator) is written, as ``omero node NAME start`` does before
  it starts the node.  Like omero-py's, it refuses while ``etc/internal.cfg`` exists and the master
  answers (``admin.py``: "Can't regenerate templates the server is running!"), which in the
  sandbox is always.

Anything else exits non-zero, as an unknown command does.
"""
import glob
import json
import os
import pathlib
import re
import shlex
import sys

ROOT = pathlib.Path(os.environ["OMERODIR"])
STORE = ROOT / "etc" / "fake-config.json"
COMMENT = re.compile(r"^\s*#")


def _config() -> dict:
    return json.loads(STORE.read_text()) if STORE.exists() else {}


def _save(config: dict) -> None:
    STORE.write_text(json.dumps(config, indent=1))


def run(args: list[str]) -> None:
    with open(ROOT / "omero-calls.log", "a") as log:
        log.write(" ".join(args) + "\n")
    if args[:2] == ["config", "get"] and len(args) == 3:
        config = _config()
        if args[2] in config:
            print(config[args[2]])
    elif args[:2] == ["config", "set"]:
        rest = args[2:]
        if rest[:1] == ["--"]:
            rest = rest[1:]
        if len(rest) != 2:
            sys.exit(f"fake omero: config set needs KEY VALUE, got {rest!r}")
        config = _config()
        config[rest[0]] = rest[1]
        _save(config)
    elif args == ["config", "drop", "default"]:
        _save({})
    elif args[:1] == ["load"]:
        rest = args[1:]
        keep_going = "-k" in rest or "--keep-going" in rest
        use_glob = "-g" in rest or "--glob" in rest
        names = [a for a in rest if not a.startswith("-")]
        files = sorted(f for pattern in names for f in glob.glob(pattern)) if use_glob else names
        for name in files:
            for line in pathlib.Path(name).read_text().splitlines():
                if COMMENT.match(line) or not line.strip():
                    continue
                try:
                    run(shlex.split(line))
                except SystemExit as exc:
                    if exc.code not in (0, None) and not keep_going:
                        raise
    elif args == ["admin", "rewrite"]:
        internal = ROOT / "etc" / "internal.cfg"
        if internal.exists():  # the real one pings the master through it; in the sandbox the master is up
            sys.exit("Can't regenerate templates the server is running!")
        config = _config()
        template = ROOT / "etc" / "templates" / "ice.config"
        (ROOT / "etc" / "ice.config").write_text(
            template.read_text().replace("@omero.master.host@", config.get("omero.master.host", "localhost")))
        internal.write_text("Ice.Default.Locator=IceGrid/Locator:tcp -h %s -p 4061\n"
                            % config.get("omero.master.host", "127.0.0.1"))
    else:
        sys.exit(f"fake omero: unsupported command {args!r}")


if __name__ == "__main__":
    run(sys.argv[1:])
