"""``python -m dlcore.processor``: OMERO's processor server with dlcore's ``willAccept``."""
import sys

from dlcore.processor.server import main

sys.exit(main())
