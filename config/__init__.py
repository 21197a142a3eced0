"""Configuration: the schema, loading and validation, and the shipped default config."""
