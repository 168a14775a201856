"""Ids and names in OpenAI's spelling, and the native names behind them.

- A job created through `/v1` has the native id `ftjob-<hex>`: OpenAI's spelling is a
  valid native job id, so there is nothing to map. Native jobs keep their own ids.
- A file is a dataset named `file-<hex>` in its owner's home (services.openai_compat.files).
- A fine-tuned model: OpenAI names it `ft:<base>:<org>[:<suffix>]:<job id>`. A native model
  name cannot hold ':', so the model is registered under `ft-[<suffix>-]<job id>`
  (`native_model_name`), and `openai_model_name` spells it back from the job (its base
  model, owner and suffix). The job id is always the last part of the OpenAI name
  (`job_of_model_name`), so the job, and through it the native name, is found again
  without a lookup table.
"""

from __future__ import annotations

import re
import secrets

JOB_PREFIX = "ftjob-"
FILE_PREFIX = "file-"
RESULT_FILE_PREFIX = "file-result-"
FT_PREFIX = "ft:"
NATIVE_FT_PREFIX = "ft-"
# The organisation part of a model name when jobs have no owner (auth disabled).
NO_ORG = "local"
SUFFIX_MAX_LENGTH = 64
SUFFIX_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
_SUFFIX_RE = re.compile(SUFFIX_PATTERN)
_FILE_ID_RE = re.compile(r"^file-[0-9a-f]{24}$")
_ORG_SAFE = re.compile(r"[^A-Za-z0-9_.-]")


def new_job_id() -> str:
    return f"{JOB_PREFIX}{secrets.token_hex(12)}"


def new_file_id() -> str:
    return f"{FILE_PREFIX}{secrets.token_hex(12)}"


def is_file_id(value: str) -> bool:
    """Whether `value` is the id of an uploaded file (a dataset named like it)."""
    return bool(_FILE_ID_RE.match(value))


def result_file_id(job_id: str) -> str:
    """The id of a job's metrics CSV (generated when read, never stored)."""
    return f"{RESULT_FILE_PREFIX}{job_id}"


def job_of_result_file(file_id: str) -> str | None:
    """The job whose result file `file_id` is, or None when it names no result file."""
    if file_id.startswith(RESULT_FILE_PREFIX) and len(file_id) > len(RESULT_FILE_PREFIX):
        return file_id[len(RESULT_FILE_PREFIX):]
    return None


def is_valid_suffix(suffix: str) -> bool:
    return bool(_SUFFIX_RE.match(suffix))


def native_model_name(job_id: str, suffix: str | None) -> str:
    """The native model name a `/v1` job registers its result under: valid by the model
    name rules, since a suffix and a `/v1` job id are both made of safe characters (at
    most 3 + 64 + 1 + 30 of them)."""
    return f"{NATIVE_FT_PREFIX}{suffix}-{job_id}" if suffix else f"{NATIVE_FT_PREFIX}{job_id}"


def org_of(owner: str | None) -> str:
    """The organisation part of a model name: the owner, or `local` without auth."""
    return _ORG_SAFE.sub("-", owner) if owner else NO_ORG


def openai_model_name(base: str, owner: str | None, suffix: str | None, job_id: str) -> str:
    """OpenAI's spelling of a fine-tuned model: `ft:<base>:<org>[:<suffix>]:<job id>`."""
    parts = [base, org_of(owner)] + ([suffix] if suffix else []) + [job_id]
    return FT_PREFIX + ":".join(parts)


def job_of_model_name(name: str) -> str | None:
    """The job id an OpenAI fine-tuned model name ends with, or None when `name` is not
    one. The caller then compares the job's own `openai_model_name` with `name`: the
    base may itself hold ':' (a model fine-tuned from a fine-tuned model)."""
    if not name.startswith(FT_PREFIX):
        return None
    parts = name[len(FT_PREFIX):].split(":")
    return parts[-1] if len(parts) >= 3 and parts[-1] else None


def suffix_of_native(name: str, job_id: str) -> str | None | bool:
    """The suffix a native fine-tuned model name `ft-[<suffix>-]<job id>` carries (None
    without one); False when `name` is not a `/v1` job's model name."""
    if name == f"{NATIVE_FT_PREFIX}{job_id}":
        return None
    tail = f"-{job_id}"
    if name.startswith(NATIVE_FT_PREFIX) and name.endswith(tail):
        suffix = name[len(NATIVE_FT_PREFIX):-len(tail)]
        if is_valid_suffix(suffix):
            return suffix
    return False
