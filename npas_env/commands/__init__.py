"""Subcommands of the ``npas`` command line, one module each."""
