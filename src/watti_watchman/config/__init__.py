"""Configuration: YAML → env substitution → JSON-schema validation → typed objects → resolution."""
