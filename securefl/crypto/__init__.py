"""Primitives the privacy layers share. The federated core never imports this package."""
