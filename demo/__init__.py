"""The README's main job: a FastAPI embedding service, with and without ``batched``.

    python -m demo              # both modes at 1, 16 and 64 clients: a table
    python demo/loadtest.py --mode batched --clients 64 --seconds 10 --json out.json

See demo/README.md.
"""
