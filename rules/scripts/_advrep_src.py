"""Put the repository's src/ on sys.path, so rule scripts import advrep in any environment (venv or --use-conda).

Snakemake adds this folder to sys.path of every rule script; each script imports this module first.
"""

import sys
from pathlib import Path

_SRC = str(Path(__file__).resolve().parents[2] / "src")
if _SRC not in sys.path:
    sys.path.insert(0, _SRC)
