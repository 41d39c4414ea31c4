"""The control plane: one typed way to start, read and act on runs, used alike by webhooks,
the REST API, the CLI and the dashboard (SPEC §9)."""
