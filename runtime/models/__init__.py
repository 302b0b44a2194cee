"""Models that ship inside the package (the default blood-cell classifier)."""
