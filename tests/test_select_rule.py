"""docs/method.md step 7 in Polars against a plain-Python statement of it, and the paper's setting by hand."""

from __future__ import annotations

import math

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from segsft.select import SelectConfig, attribution_rule

SEG_SCHEMA = {"sample_id": pl.String, "segment": pl.Int32, "char_start": pl.Int32, "char_end": pl.Int32,
              "n_tokens": pl.Int32, "strength": pl.Float64, "consistency": pl.Float64}


def frame(rows: list[tuple]) -> pl.LazyFrame:
    """rows: (sample_id, segment, strength, consistency, n_tokens)."""
    return pl.DataFrame(
        [{"sample_id": s, "segment": k, "char_start": 10 * k, "char_end": 10 * k + 10, "n_tokens": n,
          "strength": st_, "consistency": c} for s, k, st_, c, n in rows],
        schema=SEG_SCHEMA,
    ).lazy()


# ---- an independent plain-Python statement of docs/method.md step 7 ------------------------------

def _num(x: float | None) -> float | None:
    return None if x is None or math.isnan(x) else x


def reference_sample(strengths, consistencies, cfg: SelectConfig, seq_tokens: int | None) -> list[tuple[bool, str]]:
    n = len(strengths)
    if seq_tokens is not None and seq_tokens < cfg.min_tokens:
        return [(True, "short_sample")] * n
    s = [x if x is not None and math.isfinite(x) else 0.0 for x in strengths]
    order = sorted(range(n), key=lambda k: (-s[k], k))
    total = 0.0
    for k in order:
        total += s[k]
    # The shortest prefix (in that order) whose share of the total reaches top_mass.
    prefix, acc = set(), 0.0
    for k in order:
        if total <= 0 or acc / total >= cfg.top_mass:
            break
        prefix.add(k)
        acc += s[k]
    keep = {i if i >= 0 else n + i for i in cfg.always_keep}
    keep = {i for i in keep if 0 <= i < n}
    out = []
    for k in range(n):
        c = _num(consistencies[k])
        if c is None:
            ok = cfg.max_consistency is None and cfg.min_consistency is None
        else:
            ok = (cfg.max_consistency is None or c <= cfg.max_consistency) and \
                 (cfg.min_consistency is None or c >= cfg.min_consistency)
        if k in prefix and ok:
            out.append((True, "top_mass"))
        elif k in keep:
            out.append((True, "always_keep"))
        elif k not in prefix:
            out.append((False, "below_top_mass"))
        elif c is None:
            out.append((False, "null_consistency"))
        elif cfg.max_consistency is not None and c > cfg.max_consistency:
            out.append((False, "too_consistent"))
        else:
            out.append((False, "not_consistent_enough"))
    return out


# ---- property: the two agree on any table and settings -----------------------------------------

strength = st.one_of(st.sampled_from([0.0, 0.25, 0.5, 1.0, 2.0]),  # ties, zeros
                     st.floats(0, 10, allow_nan=False), st.just(float("nan")))
consistency = st.one_of(st.none(), st.just(float("nan")), st.sampled_from([0.0, 0.5, 0.7, 0.8, 1.0]), st.floats(0, 1))
bound = st.one_of(st.none(), st.sampled_from([0.0, 0.5, 0.8, 1.0]), st.floats(0, 1))


@st.composite
def tables(draw):
    n_samples = draw(st.integers(1, 5))
    samples = []
    for i in range(n_samples):
        n = draw(st.one_of(st.sampled_from([1, 2, 3]), st.integers(1, 7)))
        samples.append((f"s{i}", draw(st.lists(strength, min_size=n, max_size=n)),
                        draw(st.lists(consistency, min_size=n, max_size=n)), draw(st.integers(0, 40))))
    mx, mn = draw(bound), draw(bound)
    if mx is not None and mn is not None and mn > mx:
        mn, mx = mx, mn
    cfg = SelectConfig(
        top_mass=draw(st.one_of(st.sampled_from([0.0, 0.5, 0.7, 1.0]), st.floats(0, 1))),
        max_consistency=mx, min_consistency=mn,
        always_keep=tuple(dict.fromkeys(draw(st.lists(st.integers(-6, 6), max_size=5)))),
        min_tokens=draw(st.sampled_from([0, 0, 10, 25])),
    )
    return samples, cfg


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tables())
def test_polars_rule_equals_plain_python_statement(case):
    samples, cfg = case
    rows = [(sid, k, s[k], c[k], 5) for sid, s, c, _ in samples for k in range(len(s))]
    lengths = pl.DataFrame({"sample_id": [x[0] for x in samples], "n_tokens": [x[3] for x in samples]},
                           schema={"sample_id": pl.String, "n_tokens": pl.Int32}).lazy()
    got = attribution_rule(frame(rows), cfg, lengths).collect()
    expected = [(sid, k, *tw) for sid, s, c, ntok in samples
                for k, tw in enumerate(reference_sample(s, c, cfg, ntok))]
    assert list(zip(got["sample_id"], got["segment"], got["train"], got["why"])) == expected


def test_rule_needs_no_samples_table_when_min_tokens_is_zero():
    # shares before: 0: 0, 1: .5 (crosses to .8), 2: .8 -> prefix {0, 1}
    rows = [("a", 0, 0.5, 0.9, 5), ("a", 1, 0.3, 0.1, 5), ("a", 2, 0.1, 0.1, 5), ("a", 3, 0.1, 0.1, 5)]
    got = attribution_rule(frame(rows), SelectConfig(always_keep=()), None).collect()
    assert got["why"].to_list() == ["too_consistent", "top_mass", "below_top_mass", "below_top_mass"]


# ---- the paper's setting on a hand-built table ------------------------------------------------

def test_paper_setting_hand_derived_mask():
    """top_mass=0.7, max_consistency=0.8, always_keep=[0,-2,-1], min_tokens=0; derivations inline."""
    rows = [
        # A: order 1 (.40), 3 (.25), 4 (.15), 0 (.05), 2 (.05: tie with 0, later index), 5, 6, 7.
        # Shares before: 1: 0, 3: .40, 4: .65 (< .7, crosses to .80: kept), 0: .80 -> prefix {1, 3, 4}.
        ("A", 0, 0.05, 0.30, 4), ("A", 1, 0.40, 0.90, 4), ("A", 2, 0.05, 0.10, 4), ("A", 3, 0.25, 0.50, 4),
        ("A", 4, 0.15, 0.80, 4), ("A", 5, 0.04, 0.20, 4), ("A", 6, 0.03, 0.95, 4), ("A", 7, 0.03, 0.40, 4),
        # B (sixteenths): 2 (10), then 1 and 3 tie at 2: 1 first by index. Shares before: 2: 0,
        # 1: .625 (kept, crosses to .75), 3: .75 (out). Segment 1 has a null consistency.
        ("B", 0, 1 / 16, 0.50, 2), ("B", 1, 2 / 16, None, 2), ("B", 2, 10 / 16, 0.80, 2), ("B", 3, 2 / 16, 0.10, 2),
        ("B", 4, 0.0, None, 2), ("B", 5, 1 / 16, 0.60, 2), ("B", 6, 0.0, None, 2),
        # C: one segment, too consistent, but it is segment 0 (and -1).
        ("C", 0, 0.30, 0.95, 7),
        # D: every strength 0: no prefix at all (no NaN), only always_keep trains.
        ("D", 0, 0.0, None, 3), ("D", 1, 0.0, None, 3), ("D", 2, 0.0, None, 3), ("D", 3, 0.0, None, 3),
    ]
    expected = {
        ("A", 0): (True, "always_keep"), ("A", 1): (False, "too_consistent"), ("A", 2): (False, "below_top_mass"),
        ("A", 3): (True, "top_mass"), ("A", 4): (True, "top_mass"), ("A", 5): (False, "below_top_mass"),
        ("A", 6): (True, "always_keep"), ("A", 7): (True, "always_keep"),
        ("B", 0): (True, "always_keep"), ("B", 1): (False, "null_consistency"), ("B", 2): (True, "top_mass"),
        ("B", 3): (False, "below_top_mass"), ("B", 4): (False, "below_top_mass"), ("B", 5): (True, "always_keep"),
        ("B", 6): (True, "always_keep"),
        ("C", 0): (True, "always_keep"),
        ("D", 0): (True, "always_keep"), ("D", 1): (False, "below_top_mass"), ("D", 2): (True, "always_keep"),
        ("D", 3): (True, "always_keep"),
    }
    cfg = SelectConfig(top_mass=0.7, max_consistency=0.8, always_keep=(0, -2, -1), min_tokens=0)
    got = attribution_rule(frame(rows[::-1]), cfg).collect()  # input order must not matter
    assert {(s, k): (t, w) for s, k, t, w in got.select("sample_id", "segment", "train", "why").iter_rows()} == expected
    assert list(zip(got["sample_id"], got["segment"])) == sorted(expected)  # sorted by sample, segment
    assert got["n_tokens"].to_list() == [r[4] for r in sorted(rows, key=lambda r: (r[0], r[1]))]


def test_min_tokens_trains_short_samples_in_full():
    rows = [("long", 0, 1.0, 0.1, 5), ("long", 1, 0.0, 0.1, 5), ("long", 2, 0.0, 0.1, 5),
            ("short", 0, 1.0, 0.1, 5), ("short", 1, 0.0, 0.1, 5), ("short", 2, 0.0, 0.1, 5)]
    lengths = pl.LazyFrame({"sample_id": ["long", "short"], "n_tokens": [4000, 3999]})
    got = attribution_rule(frame(rows), SelectConfig(always_keep=(), min_tokens=4000), lengths).collect()
    assert got.filter(pl.col("sample_id") == "short")["why"].to_list() == ["short_sample"] * 3
    assert got.filter(pl.col("sample_id") == "short")["train"].all()
    assert got.filter(pl.col("sample_id") == "long")["train"].to_list() == [True, False, False]


@pytest.mark.parametrize("keep,expected", [((5, -9), [False, False, False]), ((-3, 2, 2, -1), [True, False, True])])
def test_always_keep_negative_duplicate_and_out_of_range(keep, expected):
    rows = [("a", k, 0.0, None, 1) for k in range(3)]
    got = attribution_rule(frame(rows), SelectConfig(always_keep=keep)).collect()
    assert got["train"].to_list() == expected
