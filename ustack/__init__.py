"""ustack: a user-space TCP/IP stack on a Linux TUN device, built to be studied."""

__version__ = "0.1.0"
