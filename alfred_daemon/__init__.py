"""alfred-daemon: live audio in, speech events, transcripts and end-of-turn decisions out.

The package is split by direction of data flow:

* ``alfred_daemon.engine``  -- models and per-session state; pure, no processes or sockets.
* ``alfred_daemon.runtime`` -- supervisor, workers, shared-memory rings, control plane.
* ``alfred_daemon.api``     -- gRPC, HTTP and dashboard surfaces over the runtime.
* ``alfred_daemon.ops``     -- configuration, logging, systemd integration.

Importing the package sets ``ORT_DISABLE_TELEMETRY=1`` (unless the operator set it) because
onnxruntime >= 1.32 otherwise writes a telemetry database under the home directory of every
process that imports it -- something a daemon running under a locked-down unit must not do.
It has to happen here, before any submodule can import onnxruntime.
"""

import os as _os

_os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

__version__ = "0.1.0"
