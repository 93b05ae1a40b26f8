"""gRPC glue. The ``*_pb2*.py`` modules below this folder are generated from ``proto/`` by
``make proto`` and are not committed; ``avs.rpc.convert`` maps them to domain types."""
