"""TCP: the sans-I/O connection state machine, its buffers, congestion control
and demultiplexing."""
