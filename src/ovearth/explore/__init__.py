"""``ovearth explore``: a local web page to try classes, thresholds and refiners on one image.

Layers (each module does one thing):

* :mod:`.catalog`: which image files the page may read (listed files, ``--root``, uploads);
* :mod:`.picture`: an image file as the working RGB (a quick-look for large rasters);
* :mod:`.request`: the page's JSON turned into a vocabulary and :class:`SegmentSettings`;
* :mod:`.cache`: a small LRU cache bounded by bytes;
* :mod:`.session`: the one model of the process, its lock and the per-name caches;
* :mod:`.render` and :mod:`.export`: PNG pictures, and the files ``segment`` writes;
* :mod:`.server`: the HTTP routes (Starlette), serving ``static/`` (no internet assets).
"""
