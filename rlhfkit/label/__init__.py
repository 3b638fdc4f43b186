"""The annotation web app: collect pairwise / ranking / rating / best–worst preferences and blind
A/B judgements in the browser, measure agreement, export preference records.

Modules: `store` (tables, engine, migrations), `projects` (admin API), `assign` (the annotator's
hot path), `answers` (vote payloads), `agreement` (statistics), `report`, `export`, `app`
(FastAPI), `server`, `cli` (`rlhfkit annotate …`). Nothing heavy is imported here.
"""
