"""aurl: a three-stage training pipeline for symbolic (MIDI) music generation.

Importing aurl has no side effects: no environment variables, no process group, no file writes.
"""

__version__ = "0.1.0"
