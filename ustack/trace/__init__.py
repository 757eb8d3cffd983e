"""The trace's records and vocabulary: what the core says about what it did
and why. Sans-I/O and below the core (tcp and net import it); the study tools
(ustack.study) read what it defines, and its sinks write it out."""
