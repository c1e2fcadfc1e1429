"""The `wd data` command group: cache (pre-tokenize), curate (own footage into clips) and inspect."""
