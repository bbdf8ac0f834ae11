"""Errors every command shares (a module of its own so subcommands never import back from ``cli``)."""


class UsageError(Exception):
    """A bad argument; the message is printed as one line and the process exits with status 2."""
