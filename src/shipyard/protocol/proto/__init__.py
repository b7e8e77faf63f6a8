"""Generated gRPC modules for the V2 service (see inference.proto)."""
