"""The OMERO adapter: the only part of dlcore that imports ``omero``.

- :mod:`~dlcore.omero.slide`: :class:`OmeroSlide`, a :class:`~dlcore.io.slide.Slide` read tile by tile
  from OMERO's RawPixelsStore;
- :mod:`~dlcore.omero.sink`: :class:`OmeroSink`, a :class:`~dlcore.io.sink.ResultSink` writing ROIs, a
  label image, an OMERO.table, key-value pairs, tags and files back onto the image;
- :mod:`~dlcore.omero.workflows`: :func:`run_on_objects`, the one call the scripts and ``omero dl`` make;
- :mod:`~dlcore.omero.annotated` (with :mod:`~dlcore.omero.shapes`): ROIs and tags as an annotated
  training dataset, reading only the annotated regions;
- :mod:`~dlcore.omero.training`: Train_Model and Export_Annotated_Dataset (train into the registry or
  export an archive, attach the report or the zip to the images' datasets);
- :mod:`~dlcore.omero.qc` (with :mod:`~dlcore.omero.qc_writer` and :mod:`~dlcore.omero.qc_table`): QC_Slides,
  slide quality control written onto each image (key-value pairs, tags, files) and into each dataset's table;
- :mod:`~dlcore.omero.scripts`: the helpers the thin scripts in ``omero_scripts/Deep_Learning`` use.

The adapter talks to OMERO through a narrow part of :class:`omero.gateway.BlitzGateway`:
``getObject``, ``getUpdateService``, ``getQueryService``, ``getPixelsService``, ``c.sf.submit`` (Delete2),
``createFileAnnfromLocalFile``, ``SERVICE_OPTS``, ``c.sf.createRawPixelsStore`` and
``c.sf.sharedResources``; on wrappers ``getId``, ``getName``, ``getPrimaryPixels``, ``getPixelSizeX/Y``,
``getChannelLabels``, ``canAnnotate``, ``canLink``, ``getDetails().getGroup()``, ``listParents`` and
``listChildren``.  The test double in ``tests/omero_double.py`` implements exactly these.
"""
