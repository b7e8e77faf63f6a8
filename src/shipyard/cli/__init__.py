"""The ``shipyard`` command. It parses arguments and calls the library; it holds no logic."""
