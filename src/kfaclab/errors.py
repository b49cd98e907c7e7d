"""Errors that reach users as one line, never as a traceback."""


class UsageError(ValueError):
    """Bad input from a user: the CLI prints the message on one line and exits with code 2.

    Messages name the argument, the rule and the bad value, e.g.
    "damping must be > 0, got -1.0".
    """


class Terminated(KeyboardInterrupt):
    """SIGTERM (a job scheduler, `kill`, a container stopping), raised where Ctrl-C would be.

    A subclass of KeyboardInterrupt so that every path that already cleans up after Ctrl-C
    (a sweep re-queues its running trial, keeps every finished one) does so for SIGTERM too.
    """
