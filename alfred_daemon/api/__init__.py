"""Client-facing surfaces on the supervisor's event loop: gRPC (``grpc_server``, with its
knobs, per-stream record and plumbing in ``grpc_config``, ``grpc_session`` and
``grpc_plumbing``), HTTP ops (``http_server``), the WebSocket bridge (``ws_bridge``),
WebRTC/WHIP (``webrtc``, ``webrtc_ice``), the monitor and the voice console. All of them
reach a session through one ``bridge.SessionBridge`` and map runtime errors to their
statuses with one table (``errors``); ``convert`` validates and converts the wire forms,
``outbox`` and ``replay`` hold a session's outbound events; ``auth``, ``tls`` and
``web_security`` guard the doors."""
