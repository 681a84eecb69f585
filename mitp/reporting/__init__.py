"""Reporting: the report of every stage's metrics and the statistics behind its comparisons."""
