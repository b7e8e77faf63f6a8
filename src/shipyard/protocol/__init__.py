"""Wire formats: V2 (Open Inference Protocol) and KServe V1 messages and tensor codecs.

This package imports nothing else of Shipyard's.
"""
