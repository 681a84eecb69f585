"""Tracking: the MLflow store and run tags, the pyfunc model MLflow serves, and the figures logged with runs."""
