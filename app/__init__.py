"""Claude Agent Service: the Claude Code CLI as an HTTP service."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("claude-agent-service")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"
