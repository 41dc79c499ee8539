"""Python code generated from ``proto/fedmuscle.proto`` (DESIGN §6): do not edit by hand.

``fedmuscle_pb2`` (messages), ``fedmuscle_pb2.pyi`` (their types) and ``fedmuscle_pb2_grpc``
(the ``FedMuscle`` service stub and servicer base) are committed so that installing the
package needs no compiler. ``python -m fedmuscle_secure.transport.wire_pb`` regenerates them with the
pinned ``grpcio-tools`` (the ``dev`` extra); ``tests/unit/transport/test_wire.py`` fails when
the committed files differ from what the ``.proto`` generates. Use them through
:mod:`fedmuscle_secure.transport.codec` (messages) and :mod:`fedmuscle_secure.transport.chunks` (chunks).
"""
