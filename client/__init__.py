"""A small Python client of the qa-ensemble HTTP API (`QAClient`, `AsyncQAClient`) and the `qa` CLI.

A separate program: it talks HTTP only and imports nothing of the service's packages.
"""

from client.http import AsyncQAClient, QAClient, QAClientError

__all__ = ["AsyncQAClient", "QAClient", "QAClientError"]
