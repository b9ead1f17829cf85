"""Client for a Kashf tagging service: ``Client`` (blocking), ``AsyncClient``, typed answers in ``models``,
one error type ``KashfError``; the ``kashf`` command line is ``kashf_client.cli``."""

from kashf_client import models
from kashf_client._core import DEFAULT_URL, Limits, Retry
from kashf_client.client import AsyncClient, Client
from kashf_client.errors import KashfError
from kashf_client.models import ImageReport, ItemReport, TextReport

__all__ = [
    "DEFAULT_URL",
    "AsyncClient",
    "Client",
    "ImageReport",
    "ItemReport",
    "KashfError",
    "Limits",
    "Retry",
    "TextReport",
    "models",
]
__version__ = "0.1.0"
