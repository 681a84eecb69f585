"""Configuration: the params.yaml schema (params), the data-source schema, dotted keys and the sweep-space grammar. Imports nothing of mitp but errors."""
