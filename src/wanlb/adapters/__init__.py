"""Thin kernel adapters: nft, routing (pyroute2), sysctls.  No decisions live here."""
