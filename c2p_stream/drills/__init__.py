"""Reliability drills (issue 6): bounded versions run in the test suite, full sizes via ``python -m c2p_stream.drills``."""
