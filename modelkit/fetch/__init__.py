"""Safe URL fetching for images and videos: address policy, media sniffing and the fetcher itself."""

from modelkit.fetch.addresses import (
    AllowList,
    IPAddress,
    IPNetwork,
    is_forbidden_address,
    parse_allow_hosts,
    parse_numeric_ipv4,
)
from modelkit.fetch.client import (
    DEFAULT_PORTS,
    MAX_URL_CHARS,
    SNIFF_BYTES,
    Fetched,
    Fetcher,
    FetchPolicy,
    policy_from_settings,
)
from modelkit.fetch.sniff import sniff_media_type

__all__ = [
    "DEFAULT_PORTS", "MAX_URL_CHARS", "SNIFF_BYTES", "AllowList", "FetchPolicy", "Fetched", "Fetcher",
    "IPAddress", "IPNetwork", "is_forbidden_address", "parse_allow_hosts", "parse_numeric_ipv4", "policy_from_settings",
    "sniff_media_type",
]
