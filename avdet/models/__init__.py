"""The two-tower audio-visual model, its clustering heads and losses."""
