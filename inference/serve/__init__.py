"""The model server's parts, on Seldon's MLServer: which models to serve, the runtime, requests, transports.

`inference.server` is the command that puts them together.
"""
