"""Operating the daemon: ``serve`` (run until a signal), ``signals`` (handlers only
enqueue), ``config`` (the TOML file, validation, environment overrides, reload),
``logs`` (journald-aware or JSON lines, rotating file), ``pidfile``, ``systemd`` (the notify
protocol and watchdog)."""
