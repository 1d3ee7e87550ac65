"""The ``cnn-explain`` command line: thin Typer commands over the ``explain`` library."""
