"""What every layer may import: one-line errors and their checks, and the rank/world and gather helpers."""
