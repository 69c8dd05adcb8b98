"""The feature cache: the contract between compute (stage 2) and render (stage 3).

``feature_data`` (the typed data a page shows), ``files`` (the cache folder's files, written
atomically, read back) and ``manifest`` (whether a cache matches a config). Imports no torch,
so rendering, checking and exporting start without loading it.
"""
