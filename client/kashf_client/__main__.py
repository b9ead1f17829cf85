"""``python -m kashf_client``: the kashf command line."""

from kashf_client.cli import main

main()
