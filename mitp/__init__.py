"""MITP: memory-inspired temporal prompt interaction between frozen image and text encoders, and the library behind the pipeline stages in ``pipeline/``."""
