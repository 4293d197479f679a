"""Settings: every setting read from the environment once, validated, with one clear line for a bad value.

May import: nothing of otel_segments outside settings/ (every other part reads its settings from here).
"""
