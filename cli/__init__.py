"""The `pagoflow` command line."""
