"""The ``streamscribe`` command line."""
