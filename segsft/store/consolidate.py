"""Merge the finished parts of every world size into one part: at the end of a complete run
whose dir holds parts of several world sizes (so the glob users type sees each sample once),
and always with `attribute.consolidate=true`.

After reruns with other world sizes a run dir holds parts of several world sizes (selection
reads them all, each sample once). Consolidation rewrites them as the one part `00000-of-00001`
and removes the rest. Every step leaves a readable run: the merged tables are written over
part 00000-of-00001 (whose samples are kept: its rows win the deduplication), then each other
part loses its marker and then its tables. A crash anywhere leaves duplicates that selection
reads once; a rerun finishes the job.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from segsft.store.attribution_tables import AttributionDamaged, AttributionNotReady, open_attribution
from segsft.store.io import write_json, write_parquet
from segsft.store.layout import ATTRIBUTION_TABLES, RunLayout, parse_part, part_name
from segsft.store.parts import TABLES as SCHEMAS
from segsft.store.parts import PartBusy
from segsft.schemas import REJECTS_SCHEMA, SID

log = logging.getLogger(__name__)


def _read(path: Path, schema: pa.Schema) -> pa.Table:
    return pq.read_table(path, schema=schema)


def mixed_world_sizes(run_dir: str | Path) -> bool:
    """Parts of more than one world size lie side by side (finished or not): a user's glob
    over the part files would see some samples twice."""
    lay = RunLayout(run_dir).attribution
    parts = {p for t in lay.table_files().values() for p in t} | lay.markers() | set(lay.partial_parts())
    return len({parse_part(p)[1] for p in parts}) > 1


def consolidate(run_dir: str | Path) -> dict[str, Any] | None:
    """Merge every finished part into part 00000-of-00001; None when there is nothing to do
    (one part already) or the run is not complete yet (the last rank to finish does it)."""
    from filelock import FileLock, Timeout

    lay = RunLayout(run_dir).attribution
    try:
        lock = FileLock(str(lay.consolidate_lock), timeout=0)
        lock.acquire()
    except Timeout:
        log.info("another process is consolidating %s", lay.dir)
        return None
    try:
        try:
            tables = open_attribution(run_dir)
        except AttributionDamaged as e:
            log.warning("consolidation skipped: %s", e)
            return None
        except AttributionNotReady:
            log.info("consolidation waits until every part is finished (the last rank to finish does it)")
            return None
        target = part_name(0, 1)
        parts = lay.finished_parts()
        leftovers = sorted({p for t in lay.table_files().values() for p in t} | lay.markers() | set(lay.partial_parts()))
        others = [p for p in leftovers if p != target]
        if not others:
            return None
        busy = []
        held = []
        for p in [target, *others]:  # nobody may write a part while it is merged or removed
            pl_ = FileLock(str(lay.lock(p)), timeout=0)
            try:
                pl_.acquire()
                held.append(pl_)
            except Timeout:
                busy.append(p)
        try:
            if busy:
                raise PartBusy(f"cannot consolidate {lay.dir}: parts {busy} are being written by another process "
                               f"(see their {lay.lock_holder('*').name} files); run again once it has finished")
            merged = _merge(tables)
            for t in ATTRIBUTION_TABLES:
                write_parquet(lay.table(t, target), merged[t], SCHEMAS[t])
            summary = {"part": target, "consolidated_from": parts, "rows_in_shard": merged["samples"].num_rows
                       + merged["rejects"].num_rows, "in_other_parts": 0, "scored": merged["samples"].num_rows,
                       "rejected": merged["rejects"].num_rows}
            old = lay.marker(target)
            if old.is_file():
                summary = {**json.loads(old.read_text()), **summary}
            write_json(lay.marker(target), summary)
            for p in others:
                # Marker first: a part without it is unfinished, and never read in place of the merged one.
                lay.marker(p).unlink(missing_ok=True)
                for t in ATTRIBUTION_TABLES:
                    lay.table(t, p).unlink(missing_ok=True)
                shutil.rmtree(lay.partial(p), ignore_errors=True)
                lay.lock_holder(p).unlink(missing_ok=True)
        finally:
            for h in held:
                h.release()
        for p in others:
            lay.lock(p).unlink(missing_ok=True)
        try:
            lay.partial_root.rmdir()
        except OSError:
            pass
        log.info("consolidated %d part(s) of %s into %s: %d samples, %d rejects", len(parts), lay.dir, target,
                 summary["scored"], summary["rejected"])
        print(f"attribute: consolidated parts {parts} into {target}: {summary['scored']} scored, "
              f"{summary['rejected']} rejected -> {lay.dir}", flush=True)
        return summary
    finally:
        lock.release()


def _merge(tables: Any) -> dict[str, pa.Table]:
    """Each sample once (the first part in name order), as selection reads them."""
    winners = tables.winners((SID,), ()).select(SID, "__part").collect()
    out = {}
    for t, paths in (("segments", tables.segments), ("samples", tables.samples)):
        pieces = []
        for i, p in enumerate(paths):
            ids = winners.filter(winners["__part"] == i)[SID].to_arrow()
            tab = _read(p, SCHEMAS[t])
            pieces.append(tab.filter(pc.is_in(tab.column(SID), value_set=ids.cast(pa.string()))))
        out[t] = pa.concat_tables(pieces) if pieces else SCHEMAS[t].empty_table()
    scored = out["samples"].column(SID)
    seen: set[str] = set(scored.to_pylist())
    rows = []
    for p in tables.rejects:
        for r in _read(p, REJECTS_SCHEMA).to_pylist():
            if r[SID] not in seen:
                seen.add(r[SID])
                rows.append(r)
    out["rejects"] = pa.Table.from_pylist(rows, schema=REJECTS_SCHEMA)
    return out
