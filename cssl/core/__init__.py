"""What every layer may import: one-line errors and their checks, the rank/world and gather helpers, and
file writes that fail in one line (storage)."""
