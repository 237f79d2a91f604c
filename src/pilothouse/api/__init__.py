"""The embedded control API (REST, OpenAPI), its daemon and its client."""
