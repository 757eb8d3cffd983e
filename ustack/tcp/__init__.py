"""TCP: demultiplexing, and (coming) the sans-I/O connection state machine."""
