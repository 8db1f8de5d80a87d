"""Exception types the engine raises, so callers can map them to transport errors."""


class EngineError(Exception):
    """Base class for every error the engine raises on purpose."""


class InvalidAudioError(EngineError, ValueError):
    """A frame could not be accepted (wrong width, empty, non-finite, wrong rate).

    The frame is rejected whole and the session's state is left exactly as it was, so the
    caller can report the error and keep streaming.
    """


class ModelError(EngineError, RuntimeError):
    """A model file is missing, corrupt or unusable; raised at start, never mid-stream."""


class ConfigError(EngineError, ValueError):
    """A configuration value is out of range; the message names the key."""
