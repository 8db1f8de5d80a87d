"""The voice-processing engine: Silero VAD -> Whisper STT -> Smart Turn, per session.

Everything here is a library: no processes, no sockets, no threads of its own. The runtime
wraps it; tests and the ``transcribe`` CLI drive it directly.

The split that matters for the runtime is between :class:`~.core.SessionCore`, a pure
state machine that turns VAD probabilities and job results into events and new jobs, and the
model wrappers that execute jobs. The core never touches a model, so a job can run on any
worker while the core stays wherever the session lives.

Where things are:

* the session core: ``core`` (speech segments, wiring, the ordering contract), with
  ``streaming`` (partials and finals), ``utterance`` (one utterance's decode window and
  commits), ``turn_taking`` (turns, Smart Turn decisions, barge-in) and ``ordering`` (the
  output queue);
* ``session``: :class:`~.session.Session`, the in-process driver (runs VAD and jobs inline);
* ``jobs``: what the core asks for and how one is run; ``events``: what it emits;
* models: ``vad``, ``stt`` (with the text rules in ``text``), ``turn`` (Smart Turn),
  ``models`` (finding the weights), ``onnx``, ``int8_check``, ``numerics``;
* ``audio`` (PCM and WAV in, resampling), ``config``, ``errors``.
"""
