"""The data plane: REST server, model repository, and the protocol handlers between them."""
