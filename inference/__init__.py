"""Batch scoring of news archives with an exported newsimpact model (no Lightning imports here)."""
