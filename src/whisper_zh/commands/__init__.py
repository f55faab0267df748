"""Command-line commands: one module per `whisper-zh` subcommand (argument parsing and console output only)."""
