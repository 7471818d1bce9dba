"""Tasks and the files they come from."""
