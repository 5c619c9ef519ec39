"""The explicit Parquet schema of every table the pipeline writes (docs/method.md's file contract),
and the columns each reader takes from them. One name, one meaning."""

from __future__ import annotations

import pyarrow as pa

#: The key of every table.
SID = "sample_id"

SEGMENTS_SCHEMA = pa.schema(
    [
        ("sample_id", pa.string()),
        ("segment", pa.int32()),
        ("char_start", pa.int32()),
        ("char_end", pa.int32()),
        ("token_start", pa.int32()),
        ("token_end", pa.int32()),
        ("n_tokens", pa.int32()),
        ("attr_sum", pa.float64()),
        ("attr_abs_sum", pa.float64()),
        ("strength", pa.float64()),
        pa.field("consistency", pa.float64(), nullable=True),
        ("token_attr", pa.list_(pa.float32())),
        # Cheap signals (segsft.method.token_stats; null where not computed): the mean
        # -log p and the mean predictive entropy over the segment's tokens (one forward pass,
        # attribute.token_stats), and gradient x input at alpha = 1 summed / abs-summed (when
        # 1 is one of the rule's nodes: adaptive, linspace, trapezoid, gradient_x_input).
        pa.field("nll_mean", pa.float64(), nullable=True),
        pa.field("entropy_mean", pa.float64(), nullable=True),
        pa.field("gxi_sum", pa.float64(), nullable=True),
        pa.field("gxi_abs_sum", pa.float64(), nullable=True),
        # attribute.rule=adaptive (null for the fixed rules): the strength's quadrature error
        # (its largest change over the last doubling of the evaluations), and whether the
        # segment's train decision is within that error of flipping (or changed over it).
        pa.field("strength_err", pa.float64(), nullable=True),
        pa.field("borderline", pa.bool_(), nullable=True),
    ]
)

SAMPLES_SCHEMA = pa.schema(
    [
        ("sample_id", pa.string()),
        ("n_tokens", pa.int32()),
        # Prompt + trace: the length of the training sequence (docs/method.md step 8), which
        # select.min_tokens compares against; n_tokens adds the answer suffix.
        ("train_tokens", pa.int32()),
        ("n_segments", pa.int32()),
        ("answer_logprob", pa.float64()),
        ("baseline_logprob", pa.float64()),
        ("attr_total", pa.float64()),
        ("attr_norm", pa.float64()),
        pa.field("completeness_gap", pa.float64(), nullable=True),
        # attribute.rule=adaptive: the sum of |exact local errors| / |f(x) - f(x')|, a bound on
        # the gap that cannot cancel (the stop test uses it); null for the fixed rules.
        pa.field("error_bound", pa.float64(), nullable=True),
        ("rule", pa.string()),
        ("steps", pa.int32()),
        ("model", pa.string()),
        ("seconds", pa.float64()),
        # Gradient evaluations spent on the sample (every rule); for attribute.rule=adaptive
        # also the stop test: the share of train decisions unchanged at the last doubling of
        # the evaluations, and whether both targets were met (null for the fixed rules).
        ("steps_used", pa.int32()),
        pa.field("decision_stability", pa.float64(), nullable=True),
        pa.field("converged", pa.bool_(), nullable=True),
        # The sample's row in the corpus (0-based), as rejects record it: resume keys on
        # (sample_id, row), and every input row is in exactly one of samples or rejects.
        pa.field("row", pa.int64(), nullable=True),
    ]
)

REJECTS_SCHEMA = pa.schema(
    [
        ("sample_id", pa.string()),
        ("reason", pa.string()),
        ("source", pa.string()),
        ("row", pa.int64()),
    ]
)


# The contract with fine-tuning (docs/method.md): one row per segment of every sample.
MASKS_SCHEMA = pa.schema(
    [
        ("sample_id", pa.string()),
        ("segment", pa.int32()),
        ("char_start", pa.int32()),
        ("char_end", pa.int32()),
        ("n_tokens", pa.int32()),
        ("train", pa.bool_()),
        ("why", pa.string()),
        # The attribution flagged the decision as within its quadrature error of flipping
        # (false where no error estimate exists: the fixed rules, the baselines).
        ("borderline", pa.bool_()),
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
        ("unconverged", pa.string()),
        ("borderline", pa.string()),
        pa.field("score", pa.string(), nullable=True),
        ("order", pa.string()),
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

#: stage=compare: one row per pair of selections (a before b in name order).
AGREEMENT_SCHEMA = pa.schema(
    [
        ("a", pa.string()),
        ("b", pa.string()),
        ("method_a", pa.string()),
        ("method_b", pa.string()),
        # The per-segment score each ranks by (attribution: strength; score: its column; random, full: none).
        pa.field("score_a", pa.string(), nullable=True),
        pa.field("score_b", pa.string(), nullable=True),
        ("samples", pa.int64()),
        # Kept-segment sets per sample: |A and B| / |A or B| (1 when both keep nothing).
        pa.field("jaccard_mean", pa.float64(), nullable=True),
        pa.field("jaccard_median", pa.float64(), nullable=True),
        # Spearman correlation of the two scores over a sample's segments (samples with >= 2
        # segments and non-constant scores); null when either ranks by nothing.
        ("spearman_samples", pa.int64()),
        pa.field("spearman_mean", pa.float64(), nullable=True),
        pa.field("spearman_median", pa.float64(), nullable=True),
    ]
)

#: stage=evaluate / stage=generate: one row per (model, benchmark, problem, sample), graded.
GENERATIONS_SCHEMA = pa.schema(
    [
        ("model", pa.string()),
        ("benchmark", pa.string()),
        ("problem_id", pa.string()),
        ("sample", pa.int32()),
        ("output", pa.string()),
        ("output_tokens", pa.int32()),
        # stop (ended by itself) | length (hit max_new_tokens) | unknown (a graded file without it)
        ("finish_reason", pa.string()),
        ("answer", pa.string()),  # the ground truth it was graded against
        pa.field("pred", pa.string(), nullable=True),  # the extracted prediction
        ("correct", pa.bool_()),
        # match | mismatch | no_answer (nothing to extract) | truncated (nothing to extract, cut at max_new_tokens)
        ("verdict", pa.string()),
    ]
)

#: stage=evaluate: one row per (model, benchmark).
RESULTS_SCHEMA = pa.schema(
    [
        ("model", pa.string()),
        ("benchmark", pa.string()),
        ("n_problems", pa.int64()),
        ("samples", pa.int64()),  # k per problem
        ("accuracy", pa.float64()),  # mean over every sample = pass@1 averaged over k
        ("accuracy_ci_low", pa.float64()),  # 95% bootstrap over problems
        ("accuracy_ci_high", pa.float64()),
        ("mean_output_tokens", pa.float64()),
        ("median_output_tokens", pa.float64()),
        ("share_truncated", pa.float64()),
    ]
)

#: The columns select.method=score can rank by (every numeric per-segment value).
SCORE_COLUMNS = ("strength", "consistency", "attr_sum", "attr_abs_sum", "nll_mean", "entropy_mean", "gxi_sum",
                 "gxi_abs_sum")

# What selection reads; `token_attr` and the raw sums are not needed.
SELECT_SEGMENT_COLUMNS = ("sample_id", "segment", "char_start", "char_end", "n_tokens", "strength", "consistency")
# Read when present (null in the tables of the fixed rules and of older runs).
SELECT_OPTIONAL_SEGMENT_COLUMNS = ("borderline",)
SELECT_SAMPLE_COLUMNS = ("sample_id", "n_tokens", "train_tokens")
# Read when present (tables of the fixed rules, or older ones, may lack it: then null).
SELECT_OPTIONAL_SAMPLE_COLUMNS = ("converged",)

REQUIRED = {
    "segments": {name: SEGMENTS_SCHEMA.field(name).type for name in SELECT_SEGMENT_COLUMNS},
    "samples": {name: SAMPLES_SCHEMA.field(name).type for name in SELECT_SAMPLE_COLUMNS},
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
    "borderline",  # select.borderline=keep|drop overrode the rule on a borderline segment
    "full",  # select.method=full
    "random",  # select.method=random (train says whether it was drawn)
)

#: Every column of the masks table, in order (what the rule and the baselines emit).
MASKS_COLUMNS = tuple(MASKS_SCHEMA.names)
#: What fine-tuning reads of the masks table.
FINETUNE_MASKS_COLUMNS = ("sample_id", "segment", "char_start", "char_end", "train")
#: What the report reads of the attribution tables (segments without token_attr, read lazily).
REPORT_SEGMENT_COLUMNS = ("sample_id", "segment", "char_start", "char_end", "token_start", "token_end", "n_tokens",
                          "strength", "consistency")
#: The cheap per-segment signals (segsft.method.token_stats); null in tables written before them.
TOKEN_STAT_COLUMNS = ("nll_mean", "entropy_mean", "gxi_sum", "gxi_abs_sum")
REPORT_SAMPLE_COLUMNS = ("sample_id", "n_tokens", "n_segments", "completeness_gap", "rule", "steps", "model")
#: Samples columns that tables written before the adaptive rule lack; readers fill them with null.
ADAPTIVE_SAMPLE_COLUMNS = ("steps_used", "decision_stability", "converged", "error_bound")
#: Segments columns of the adaptive rule (null for the fixed rules and in older tables).
ADAPTIVE_SEGMENT_COLUMNS = ("strength_err", "borderline")

#: Label of a token that carries no loss (PyTorch's cross-entropy `ignore_index`).
IGNORE_INDEX = -100

# `<finetune dir>/train_tokens.parquet`: exactly the ids and labels the trainer sees.
TRAIN_TOKENS_SCHEMA = pa.schema(
    [
        ("sample_id", pa.string()),
        ("input_ids", pa.list_(pa.int32())),
        ("labels", pa.list_(pa.int32())),
    ]
)



# stage=export: train_tokens.parquet as the tools read it. TRL's SFTTrainer takes `labels` as
# they are (TRL >= 1.0) or builds them from input_ids and `completion_mask` (1 exactly where
# our label is set; older TRL, completion_only_loss): both give our labels. axolotl's
# pre-tokenized format wants exactly its three columns (attention_mask all ones: no padding).
EXPORT_TRL_SCHEMA = pa.schema(
    [
        ("sample_id", pa.string()),
        ("input_ids", pa.list_(pa.int32())),
        ("labels", pa.list_(pa.int32())),
        ("completion_mask", pa.list_(pa.int8())),
    ]
)
EXPORT_AXOLOTL_SCHEMA = pa.schema(
    [
        ("input_ids", pa.list_(pa.int32())),
        ("attention_mask", pa.list_(pa.int8())),
        ("labels", pa.list_(pa.int32())),
    ]
)
