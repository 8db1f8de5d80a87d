"""Operating the daemon: ``serve`` (run until a signal), signals. Config files, logging,
systemd notify and the unit file arrive with the ops issue."""
