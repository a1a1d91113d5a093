"""The command line: `main.py` builds the app from the command modules; no business logic here."""
