"""Datasets: environment-map ingest, pair rendering into shards, the torch Dataset, data expectations."""
