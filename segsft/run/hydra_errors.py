"""The entry point's one-line messages for what Hydra reports in several lines: an override it
cannot parse, a value of the wrong type, an unknown key. Each names the key and the fix.

Hydra prints these itself (`hydra._internal.utils.run_and_report`) before our code runs;
`install()` wraps that function so that, for these errors only, our line is printed instead.
Anything else keeps Hydra's report.
"""

from __future__ import annotations

import re
import sys
from dataclasses import fields, is_dataclass
from typing import Any, Callable, Sequence

_TYPES = {"Integer": "an integer (e.g. 3)", "Float": "a number (e.g. 0.7)", "Boolean": "true or false",
          "String": "a string"}
_CONVERT = re.compile(r"Value '(.*)' of type '\w+' could not be converted to (\w+)")


def _override_of(key: str, argv: Sequence[str]) -> str:
    for a in argv:
        k = a.split("=", 1)[0].lstrip("+~")
        if k == key:
            return a
    return key


def _unparsable(argv: Sequence[str]) -> str | None:
    """The first override of `argv` Hydra's grammar cannot read."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    for a in argv:
        if a.startswith("-") or "=" not in a:
            continue
        try:
            parser.parse_override(a)
        except Exception:  # noqa: BLE001 - the grammar's errors have no common base worth naming
            return a
    return None


def _keys_of(obj_type: Any) -> list[str]:
    return [f.name for f in fields(obj_type)] if is_dataclass(obj_type) else []


def one_line(ex: BaseException, argv: Sequence[str]) -> str | None:
    """Our line for a Hydra config error, or None to leave it to Hydra."""
    from hydra.errors import ConfigCompositionException, OverrideParseException
    from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

    if isinstance(ex, OverrideParseException):
        bad = _unparsable(argv)
        if bad is None:
            return None
        key, _, value = bad.partition("=")
        return (f"cannot read the override {bad!r}: a value with spaces, non-ASCII letters or any of ()[]{{}},:'\" "
                f"must be quoted: '{key}=\"{value}\"'")
    m = re.match(r"Ambiguous value for argument '([^']+)'", str(ex))
    if m:
        key, _, value = m.group(1).partition("=")
        return (f"{m.group(1)}: a comma sweeps over values only under --multirun: add -m to run one job per value, "
                f"or write a list as {key}=[{value}] or text as {key}='\"{value}\"'")
    from hydra.errors import MissingConfigException

    if isinstance(ex, MissingConfigException):
        m = re.search(r"Could not find '([^']+)/([^']+)'", str(ex))
        if not m:
            return None
        options = [o for o in (getattr(ex, "options", None) or []) if o != "base"]
        group, name = m.groups()
        return (f"{group}={name}: there is no such {group} (conf/{group}/{name}.yaml): "
                f"use one of {', '.join(options) or '(none)'}")
    if not isinstance(ex, ConfigCompositionException):
        return None
    cause = ex.__cause__
    if not isinstance(cause, OmegaConfBaseException):
        return None
    full_key = re.sub(r"\[\d+\]$", "", str(getattr(cause, "full_key", "") or ""))
    first = str(ex).splitlines()[0] if str(ex) else ""
    if isinstance(cause, ConfigKeyError) or "Could not override" in first:
        m = re.search(r"Could not override '([^']+)'", first)
        from segsft.config_schema import unknown_key_line

        return unknown_key_line(m.group(1) if m else full_key, _keys_of(getattr(cause, "object_type", None)))
    if isinstance(cause, ValidationError) and full_key:
        override = _override_of(full_key, argv)
        msg = str(cause).splitlines()[0]
        if "is not a ListConfig" in msg:
            # The user's own value in brackets is what they meant, in the list form.
            value = override.partition("=")[2]
            example = f"[{value}]" if value and not value.startswith(("[", "{")) else "[a,b]"
            return f"{override}: {full_key} is a list: write it in brackets, e.g. {full_key}={example}"
        m = _CONVERT.search(msg)
        if m:
            inside = "[" in str(getattr(cause, "full_key", ""))
            want = _TYPES.get(m.group(2), m.group(2).lower())
            what = f"a list of {want.split(' (')[0].removeprefix('an ').removeprefix('a ')}s" if inside else want
            return f"{override}: {full_key} takes {what}, not {m.group(1)!r}"
        m = re.search(r"Value '(.*)' is not a valid bool", msg)
        if m:
            return f"{override}: {full_key} takes true or false, not {m.group(1)!r}"
        return f"{override}: {msg}"
    return None


def failed_job_line(ex: BaseException) -> str | None:
    """Our line for a multirun job (hydra-submitit-launcher's, on Slurm or local) that stopped on
    one of our errors: its `error:` line, with where its log is; None for any other failure (a
    crash keeps submitit's report and its traceback)."""
    if not type(ex).__module__.startswith("submitit"):
        return None
    text = str(ex)
    head, _, stream = text.partition("Error stream produced:")
    lines = stream.splitlines()
    first = max((i for i, x in enumerate(lines) if x.startswith("error: ")), default=None)
    if first is None:
        return None
    # Ours ends the stream: the line, then the bullets of a list of problems (segsft.run.stages).
    rest = [x for x in lines[first + 1:] if x.strip()]
    if not all(x.startswith("  - ") for x in rest):
        return None
    m = re.search(r"with path (\S+)_result\.pkl", head)
    where = f" (its log: {m.group(1)}_log.err)" if m else ""
    said = " ".join([lines[first].removeprefix("error: "), "; ".join(x.removeprefix("  - ") for x in rest)])
    return f"a job of the multirun failed{where}: {said.strip()}"


def install(entered: Callable[[], bool]) -> None:
    """Print our line (exit 2) for the config errors Hydra meets before the task runs."""
    import hydra._internal.utils as hydra_utils

    original = hydra_utils.run_and_report

    def run_and_report(func: Any) -> Any:
        try:
            return func()
        except Exception as ex:  # noqa: BLE001 - re-raised through Hydra's report unless ours
            msg = None if entered() else one_line(ex, sys.argv[1:]) or failed_job_line(ex)
            if msg is None:
                def again() -> Any:
                    raise ex
                return original(again)
            print(f"error: {msg}", file=sys.stderr)
            sys.exit(2)

    hydra_utils.run_and_report = run_and_report
