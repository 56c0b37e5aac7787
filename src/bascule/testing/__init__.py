"""Parts for testing bascule's data plane without sockets (the project's own tests and bench).

Rules of this package:
- Nothing here fakes bascule's logic: sessions, exchanges, upstream connections, clusters and
  pools are the real objects. Only the edges are stand-ins: transports that record what is
  written, a loop whose clock the test moves, a Connector whose outcomes the test decides.
- Never imported by the program itself.
"""
