"""The network transport: the aggregator as a gRPC server, each party a client, over mutual TLS.

One bidirectional stream per party (``/securefl.Federation/Connect``) carries the same wire messages
as the in-process transport; parties dial out, so no party needs an open port. ``server`` is the
aggregator's :class:`~securefl.transport.Transport`; ``client`` runs a party; ``frames`` defines the
two messages that open a stream. Specified in ``protocols/network.md``.
"""

import os

# gRPC core writes log lines of its own straight to stderr, outside Python logging: for every TLS
# handshake whose server name matches no name of the aggregator's certificate it copies that name
# byte for byte (newlines and terminal escapes included), and it logs every failed handshake — text
# and volume chosen by anyone who can connect, without a certificate (found by an attacker: forged
# records, screen-clearing escapes, 17,000 lines in 10 s). securefl logs what matters itself,
# escaped and rate-limited (protocols/network.md, Logs), so gRPC's own lines are switched off before
# grpc is first imported (gRPC reads these when it starts).
os.environ["GRPC_VERBOSITY"] = "NONE"
os.environ.pop("GRPC_TRACE", None)
