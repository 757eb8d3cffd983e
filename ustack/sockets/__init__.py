"""The parts behind `ustack.socket` (the public module): the states kept on
the stack's loop (loop_side.py), the socket object (socket_object.py) and
its options and files (options.py)."""
