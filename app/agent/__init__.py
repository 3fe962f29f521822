"""Running the Claude Code CLI: argv (command), parsing (stream), processes (process)."""
