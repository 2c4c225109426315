"""The `promptsam` command line: one console script with subcommands."""
