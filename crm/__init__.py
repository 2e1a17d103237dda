"""The system of record: brokers, leads, pipeline, scoring, calls, audit.

Knows nothing of `agent` or `voice_gateway`; they build on it.
"""
