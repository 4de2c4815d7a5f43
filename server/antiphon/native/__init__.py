"""Native (Cython) accelerators, each with a pure-Python twin.

Import the public modules (e.g. ``antiphon.native.g711``), never the ``_``
implementations: the public module picks the extension when it is built and
ANTIPHON_NO_EXTENSIONS is not ``1``, and the pure-Python twin otherwise.
"""
