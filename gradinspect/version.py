"""The version of gradinspect, in one place: the package, the CLI, the report and the build
read it."""

__version__ = "0.4.0"
