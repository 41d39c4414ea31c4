"""GitHub integration: App auth and installation tokens, retries, and the repository port."""
