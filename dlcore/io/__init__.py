"""Image sources (slides) and result sinks.

``open_slide(path)`` opens a local slide; :class:`~dlcore.io.slide.Slide` is the interface every
source implements.
"""
from dlcore.io.slide import Level, Slide, SlideInfo

__all__ = ["Level", "Slide", "SlideInfo", "open_slide"]


def open_slide(path, **kwargs):
    """Open a local slide file (see :func:`dlcore.io.local.open_slide`)."""
    from dlcore.io.local import open_slide as _open

    return _open(path, **kwargs)
