"""The `kfaclab` command line: thin wrappers over the library, one module per subcommand."""
