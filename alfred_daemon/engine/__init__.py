"""The voice-processing engine: Silero VAD -> Whisper STT -> Smart Turn, per session.

Everything here is a library: no processes, no sockets, no threads of its own. The runtime
wraps it; tests and the ``transcribe`` CLI drive it directly.

The split that matters for the runtime is between :class:`~.session.SessionCore`, a pure
state machine that turns VAD probabilities and job results into events and new jobs, and the
model wrappers that execute jobs. The core never touches a model, so a job can run on any
worker while the core stays wherever the session lives.
"""
