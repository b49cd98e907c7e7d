"""The damping study: protocols, one Optuna study per cell, workers, resume, read-back, export.

Module map: ``protocol`` (TOML → frozen dataclasses), ``cells`` (the cells and their search
spaces), ``storage`` (the ``Storage`` interface: journal folder, SQLite or PostgreSQL; per-cell
locks, redaction, torn-journal healing), ``registry`` (the studies of a protocol; refusing a
changed CONFIG), ``liveness`` (heartbeats, retrying dead workers' trials), ``sweep`` (one
worker), ``runner`` (N worker processes, live table), ``progress`` (the table), ``records`` (a
trial's result in the storage), ``reader`` (``load_study_set``), ``export`` (CSV).
"""

from kfaclab.study.cells import CellInfo
from kfaclab.study.protocol import Protocol, load_protocol
from kfaclab.study.reader import StoredTrial, StudySet, load_study_set

__all__ = ["CellInfo", "Protocol", "StoredTrial", "StudySet", "load_protocol", "load_study_set"]
