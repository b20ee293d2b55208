"""One module per ``enso-tracker`` command, each owning its parser (as twine's commands do).

A command module has ``NAME``, ``HELP``, ``configure(parser)`` (its flags; the docstring
is the command's examples) and ``run(args) -> int`` (the exit code); ``COMMON = False``
opts out of the common options. ``_cli.COMMANDS`` lists them in ``--help`` order.
"""
