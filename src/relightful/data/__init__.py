"""Datasets: the starter maps, environment-map ingest, pair rendering into shards, data expectations.

One module per job, named after it (DESIGN 2), and what they share:

    starter_data.py       the `starter-data` job: CC0 HDR maps from packages and procedural skies
    ingest_hdr.py         the `ingest-hdr` job: validated, normalised maps with their LED weights
    render_pairs.py       the `render-pairs` job: the pair shards of this worker, and the merge of all workers
    pair_plan.py          which subject, maps, rotations and camera each pair uses, its split and shard
    pair_relighting.py    the relighting maths of a pair (also the evaluation's oracle)
    validate_data.py      the `validate-data` job: the expectations on both manifests, the report written
    expectations.py       the great-expectations suites, derived columns and result translation
    validation_report.py  the report's types (one result per check), as JSON and markdown
    shards.py, schema.py, splits.py   the shard format, the manifest columns, the split assignment
"""
