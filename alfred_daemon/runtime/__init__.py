"""The multi-process runtime: one supervisor, one worker per core, shared-memory audio.

Data flows one way::

    client frames -> Supervisor.push -> ring (shared memory, per session)
                                          |  VadRequest / JobRequest (ZeroMQ, no audio)
                                          v
                                   worker lanes read the ring, run models
                                          |  VadResult / JobReply
                                          v
    client events <- session queue <- SessionCore (in the supervisor)

One module per concern: ``supervisor`` (owns every process, session, ring and counter;
scheduling, faults, housekeeping), ``worker`` (the worker process and its two lanes),
``protocol`` (messages and socket layout), ``ring`` (the shared-memory audio ring and its
memory-ordering argument), ``rundir`` (private runtime directory, single-instance lock),
``live_session`` (the supervisor's per-session record and audio intake), ``backpressure``
(the degradation ladder), ``health`` (health states and alerts), ``memory`` (PSS, trim),
``config`` (the runtime's knobs), ``errors`` (what the API layers map to statuses).
"""
