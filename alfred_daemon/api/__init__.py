"""Client-facing surfaces on the supervisor's event loop: the gRPC server (``grpc_server``),
wire conversion and validation (``convert``), per-session bounded outbound queues
(``outbox``). The HTTP ops surface and dashboard join with the ops issue."""
