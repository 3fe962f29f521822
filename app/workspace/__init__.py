"""The agent's git workspace."""
