"""The network transport: the aggregator as a gRPC server, each party a client, over mutual TLS.

One bidirectional stream per party (``/securefl.Federation/Connect``) carries the same wire messages
as the in-process transport; parties dial out, so no party needs an open port. ``server`` is the
aggregator's :class:`~securefl.transport.Transport`; ``client`` runs a party; ``frames`` defines the
two messages that open a stream. Specified in ``protocols/network.md``.
"""
