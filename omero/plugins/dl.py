"""Registers ``omero dl`` (see :mod:`dlcore.omero.cli_plugin`); omero-py loads every omero/plugins/*.py on sys.path."""
from dlcore.omero.cli_plugin import HELP, DlControl

try:
    register("dl", DlControl, HELP)  # noqa: F821 - injected by omero.cli when it loads plugins
except NameError:
    if __name__ == "__main__":
        import sys

        from omero.cli import CLI

        cli = CLI()
        cli.register("dl", DlControl, HELP)
        cli.invoke(sys.argv[1:])
