"""``ovearth explore``: a local web page to try classes, thresholds and refiners on one image.

Layers (each module does one thing):

* :mod:`.catalog`: which image files the page may read (listed files, ``--root``, uploads);
* :mod:`.picture`: an image file as the working RGB (a quick-look for large rasters);
* :mod:`.request`: the page's JSON turned into a vocabulary and :class:`SegmentSettings`
  (refiner parameters naming a file or model only from ``--allow-model``);
* :mod:`.budget`: a run's memory estimated from the request, and the run budget;
* :mod:`.cache`: a small LRU cache bounded by bytes;
* :mod:`.session`: the one model of the process, its lock, the budgets and the caches;
* :mod:`.render` and :mod:`.export`: PNG pictures, and the files ``segment`` writes;
* :mod:`.guard`: which requests are answered (Host, Origin, Sec-Fetch-Site, body types);
* :mod:`.server`: the HTTP routes (Starlette), serving ``static/`` (no internet assets).
"""
