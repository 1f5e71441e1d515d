"""The command line, the only part of gradinspect that prints to the terminal or exits.

``commands`` holds the typer apps (``gradinspect MODEL DATA``, ``diff``, ``timeline``) and
``main``; ``options`` the option enums and the frozen ``CliConfig``; ``output`` what reaches
stdout and files; ``terminal`` stderr: the one error -> exit-code wrapper and the progress bar.
Imports the API, records, renderers and sinks; TensorFlow only through the API, lazily.
"""

from gradinspect.cli.commands import app, diff_app, main, timeline_app
from gradinspect.cli.options import EXIT_CODES_HELP, CliConfig, FailOn
from gradinspect.cli.output import emit
from gradinspect.config import InspectOptions, LoadOptions

__all__ = ["EXIT_CODES_HELP", "CliConfig", "FailOn", "InspectOptions", "LoadOptions", "app",
           "diff_app", "emit", "main", "timeline_app"]
