"""Auditing a fleet's provenance logs: verify, query, trace lineage, report."""
