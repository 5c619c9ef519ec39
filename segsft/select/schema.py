"""Explicit Parquet schemas of the selection outputs, and the attribution columns it reads."""

from __future__ import annotations

import pyarrow as pa

from segsft.io import SAMPLES_SCHEMA, SEGMENTS_SCHEMA

# The contract with fine-tuning (DESIGN.md): one row per segment of every sample.
MASKS_SCHEMA = pa.schema(
    [
        ("sample_id", pa.string()),
        ("segment", pa.int32()),
        ("char_start", pa.int32()),
        ("char_end", pa.int32()),
        ("n_tokens", pa.int32()),
        ("train", pa.bool_()),
        ("why", pa.string()),
    ]
)

PER_SAMPLE_SCHEMA = pa.schema(
    [
        ("sample_id", pa.string()),
        ("n_segments", pa.int32()),
        ("segments_kept", pa.int32()),
        ("n_tokens", pa.int64()),
        ("tokens_kept", pa.int64()),
        # null when the denominator is 0 (a sample without tokens), never NaN.
        pa.field("share_segments_kept", pa.float64(), nullable=True),
        pa.field("share_tokens_kept", pa.float64(), nullable=True),
        ("short_sample", pa.bool_()),
    ]
)

SWEEP_SCHEMA = pa.schema(
    [
        ("job", pa.int32()),
        ("method", pa.string()),
        ("top_mass", pa.float64()),
        pa.field("max_consistency", pa.float64(), nullable=True),
        pa.field("min_consistency", pa.float64(), nullable=True),
        ("always_keep", pa.string()),
        ("min_tokens", pa.int64()),
        ("seed", pa.int64()),
        ("samples", pa.int64()),
        ("segments", pa.int64()),
        ("segments_kept", pa.int64()),
        pa.field("share_segments_kept", pa.float64(), nullable=True),
        ("tokens", pa.int64()),
        ("tokens_kept", pa.int64()),
        pa.field("share_tokens_kept", pa.float64(), nullable=True),
        ("selection_dir", pa.string()),
    ]
)

# What selection reads; `token_attr` and the raw sums are not needed.
SEGMENT_COLUMNS = ("sample_id", "segment", "char_start", "char_end", "n_tokens", "strength", "consistency")
SAMPLE_COLUMNS = ("sample_id", "n_tokens", "train_tokens")
# Read when present (tables of the fixed rules, or older ones, may lack it: then null).
OPTIONAL_SAMPLE_COLUMNS = ("converged",)

REQUIRED = {
    "segments": {name: SEGMENTS_SCHEMA.field(name).type for name in SEGMENT_COLUMNS},
    "samples": {name: SAMPLES_SCHEMA.field(name).type for name in SAMPLE_COLUMNS},
}

# Every `why` a mask row can carry.
WHY = (
    "top_mass",  # in the top-mass prefix and within the consistency bounds
    "always_keep",  # listed in select.always_keep, dropped by the rule otherwise
    "too_consistent",  # in the prefix, consistency > max_consistency
    "not_consistent_enough",  # in the prefix, consistency < min_consistency
    "null_consistency",  # in the prefix, consistency null while a bound is set
    "below_top_mass",  # outside the top-mass prefix
    "short_sample",  # the sample has fewer than min_tokens tokens: trained in full
    "unconverged",  # select.unconverged=full: its adaptive attribution did not converge
    "full",  # select.method=full
    "random",  # select.method=random (train says whether it was drawn)
)
