"""The stage entry points: ``python -m pipeline.<stage>``, thin commands over ``mitp``."""
