"""What ``veil audit`` can be asked to run, torch-free so that the command line stays fast.

``ATTACKS``: ``--attacks`` (the learned decoder always runs: every other attack is read against it);
``PEERS``: ``--peers``, the peer defences :mod:`veil.audit.peers` re-implements.
"""

ATTACKS = ("decoder", "rmle", "hybrid", "fisher", "sticky")
PEERS = ("gaussian", "shredder", "nopeek", "disco", "blur", "downscale")
