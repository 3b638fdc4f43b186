"""The data layer: record schemas, readers/writers with file:line errors, layouts, conversions.

Importing this package is light (pydantic only); pyarrow and `datasets` are imported when a
Parquet file or a `datasets` folder is read or written. Tokenisation and collation live in
`rlhfkit.data.collate` (imports torch), which is not imported here.
"""

from rlhfkit.data.chat import prompt_to_messages, render_plain
from rlhfkit.data.convert import (
    rankings_to_pairs,
    ratings_to_pairs,
    scores_to_pairs,
    scores_to_ranking,
)
from rlhfkit.data.errors import DataError, SkipReport
from rlhfkit.data.io import detect_format, read_records, write_records
from rlhfkit.data.layouts import LAYOUTS, detect_layout, parse_row
from rlhfkit.data.lengths import check_token_lengths
from rlhfkit.data.schemas import (
    RECORD_TYPES,
    Candidate,
    CandidateSet,
    Message,
    PreferencePair,
    PromptRecord,
    Provenance,
    Ranking,
    Rating,
    Record,
    SFTExample,
)

__all__ = [
    "Candidate", "CandidateSet", "DataError", "LAYOUTS", "Message", "PreferencePair",
    "PromptRecord", "Provenance", "RECORD_TYPES", "Ranking", "Rating", "Record", "SFTExample",
    "SkipReport", "check_token_lengths", "detect_format", "detect_layout", "parse_row",
    "prompt_to_messages", "rankings_to_pairs", "ratings_to_pairs", "read_records",
    "render_plain", "scores_to_pairs", "scores_to_ranking", "write_records",
]
