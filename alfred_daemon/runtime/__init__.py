"""The multi-process runtime: one supervisor, one worker per core, shared-memory audio.

Data flows one way::

    client frames -> Supervisor.push -> ring (shared memory, per session)
                                          |  VadRequest / JobRequest (ZeroMQ, no audio)
                                          v
                                   worker lanes read the ring, run models
                                          |  VadResult / JobReply
                                          v
    client events <- session queue <- SessionCore (in the supervisor)

The supervisor's side, one room per concern::

    supervisor     lifecycle, wiring, the verbs: schedule -> send, update, tick
      sessions       the session API the transports call; audio intake, flow control
      results        worker messages applied to sessions; a lost worker's work re-run
    scheduler      PURE: the job queue, ranking (what is owed, what optional), reserved
                   lanes, VAD and decode batches -- which work goes to which idle lane
    workers        worker processes and lanes: spawn, ready, hang checks, brake, kill
    control_plane  the ZeroMQ sockets (work ROUTER, state PUB) and the receive loop
    load           the load figure (queue, lag, busy) and what a ladder step does
    housekeeping   once a second: memory, health, alerts, idle cleanup, GC and trim
    stats          counters, rolling figures, the status dicts (a public API)

Shared pieces: ``fairness`` (whose backlog is load, whose work is spare; pure),
``backpressure`` (the degradation ladder), ``health`` (health states and alerts),
``live_session`` (the supervisor's per-session record and audio intake), ``worker`` (the
worker process and its two lanes), ``protocol`` (messages and socket layout), ``ring`` (the
shared-memory audio ring and its memory-ordering argument), ``rundir`` (private runtime
directory, single-instance lock), ``memory`` (PSS, trim), ``config`` (the runtime's knobs),
``errors`` (what the API layers map to statuses).
"""
