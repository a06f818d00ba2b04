"""Files, fine-tuning jobs and batches for the local server: on-disk files, background workers, OpenAI shapes.

- **Files** live under ``<data_dir>/files/`` as ``<file-id>.bin`` plus ``<file-id>.json`` metadata. The user's file
  name is only metadata: the path on disk is always the server-made id, and names with a path separator, ``..`` or
  a NUL byte are refused outright, so an upload can never land outside that directory.
- **Fine-tuning jobs** move through OpenAI's statuses: ``validating_files`` (the cookbook checks in
  ``dte_lib.openai_prep``) → ``queued`` → ``running`` (a real LoRA fine-tune, ``dte_lib.teacher.finetune``, in a
  worker thread; one event per step carries train/valid loss) → ``succeeded`` / ``failed`` / ``cancelled``. The
  merged model is saved under ``<data_dir>/models/<job-id>/`` and served at once under its ``fine_tuned_model`` name;
  each epoch but the last also leaves a checkpoint, and the metrics go to a CSV result file as OpenAI's do.
- **Batches** read a JSONL input file of ``{"custom_id", "method", "url", "body"}`` lines, run each through the same
  chat-completion code as the HTTP route, and write output and error files in OpenAI's line format; statuses
  ``validating`` → ``in_progress`` → ``finalizing`` → ``completed`` (or ``failed``, ``cancelling`` → ``cancelled``).

Explained in notebook 01. Run it: ``dte serve --model NAME=PATH`` (see ``dte_lib.server``).
"""
from __future__ import annotations

import csv
import io
import json
import queue
import threading
import time
import traceback
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

from ..data import atomic_write_text

BATCH_CONCURRENCY = 64  # requests of one batch job in flight at once (the engine decodes them as one batch)
FILE_PURPOSES = {"fine-tune", "batch", "assistants", "user_data", "evals", "vision"}


class APIError(Exception):
    """An error that becomes an OpenAI-shaped body: ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def new_id(prefix: str) -> str:
    return prefix + uuid.uuid4().hex[:24]


def now() -> int:
    return int(time.time())


def check_filename(name: str) -> str:
    """Refuse names that could address anything but a plain file name (the disk path never uses them anyway)."""
    if not name or len(name) > 255 or "/" in name or "\\" in name or any(ord(c) < 32 or ord(c) == 127 for c in name) \
            or name in (".", "..") or ".." in name.split("."):
        raise APIError(400, f"invalid file name {name!r}: use a plain name without path separators, control "
                            "characters or '..'",
                       param="file", code="invalid_file_name")
    return name


class Files:
    def __init__(self, root: Path):
        self.dir = Path(root) / "files"
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def create(self, filename: str, purpose: str, data: bytes, *, internal: bool = False) -> dict[str, Any]:
        check_filename(filename)
        if not internal and purpose not in FILE_PURPOSES:
            raise APIError(400, f"purpose {purpose!r} is not one of {sorted(FILE_PURPOSES)}", param="purpose")
        fid = new_id("file-")
        meta = {"id": fid, "object": "file", "bytes": len(data), "created_at": now(), "filename": filename,
                "purpose": purpose, "status": "processed", "status_details": None, "expires_at": None}
        (self.dir / f"{fid}.bin").write_bytes(data)
        atomic_write_text(self.dir / f"{fid}.json", json.dumps(meta))
        return meta

    def get(self, fid: str) -> dict[str, Any]:
        path = self.dir / f"{fid}.json"
        if not fid.startswith("file-") or not fid[5:].isalnum() or not path.exists():
            raise APIError(404, f"No such File object: {fid}", param="id", code="file_not_found")
        return json.loads(path.read_text())

    def content(self, fid: str) -> bytes:
        self.get(fid)
        return (self.dir / f"{fid}.bin").read_bytes()

    def list(self, purpose: str | None = None) -> list[dict[str, Any]]:
        metas = [json.loads(p.read_text()) for p in self.dir.glob("file-*.json")]
        metas = [m for m in metas if purpose in (None, m["purpose"])]
        return sorted(metas, key=lambda m: (m["created_at"], m["id"]), reverse=True)

    def delete(self, fid: str) -> dict[str, Any]:
        self.get(fid)
        with self._lock:
            (self.dir / f"{fid}.bin").unlink(missing_ok=True)
            (self.dir / f"{fid}.json").unlink(missing_ok=True)
        return {"id": fid, "object": "file", "deleted": True}

    def rows(self, fid: str) -> list[Any]:
        """Parse a JSONL file's lines; a line that is not JSON becomes the string itself (the checks report it)."""
        out = []
        for line in self.content(fid).decode("utf-8", errors="replace").splitlines():
            if line.strip():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    out.append(line)
        return out


def page(items: list[dict[str, Any]], after: str | None, limit: int) -> dict[str, Any]:
    """OpenAI cursor pagination over newest-first ``items``: ``after`` is the id of the last item already seen."""
    if after:
        ids = [i["id"] for i in items]
        items = items[ids.index(after) + 1:] if after in ids else []
    chunk = items[:limit]
    return {"object": "list", "data": chunk, "has_more": len(items) > limit,
            "first_id": chunk[0]["id"] if chunk else None, "last_id": chunk[-1]["id"] if chunk else None}


class Jobs:
    """Fine-tuning jobs and their single background worker (one fine-tune at a time: it uses every core)."""

    def __init__(self, root: Path, files: Files, registry, train_defaults: dict[str, Any] | None = None):
        self.root, self.files, self.registry = Path(root), files, registry
        self.train_defaults = dict(train_defaults or {})
        self.jobs: dict[str, dict[str, Any]] = {}
        self.events: dict[str, list[dict[str, Any]]] = {}
        self.checkpoints: dict[str, list[dict[str, Any]]] = {}
        self.extra: dict[str, dict[str, Any]] = {}
        self._cancel: set[str] = set()
        self._q: queue.Queue[str] = queue.Queue()
        self._lock = threading.Lock()
        threading.Thread(target=self._worker, name="dte-finetune", daemon=True).start()

    def event(self, jid: str, message: str, level: str = "info", data: dict | None = None,
              type_: str = "message") -> None:
        ev = {"id": new_id("ftevent-"), "object": "fine_tuning.job.event", "created_at": now(), "level": level,
              "message": message, "data": data or {}, "type": type_}
        with self._lock:
            self.events[jid].append(ev)

    def _status(self, jid: str, status: str, **fields: Any) -> bool:
        """Move a job on; False (and no change) if it was cancelled meanwhile — cancelled is final."""
        with self._lock:
            if self.jobs[jid]["status"] == "cancelled":
                return False
            self.jobs[jid].update(status=status, **fields)
        self.event(jid, f"Job status: {status}" if status != "failed" else
                   f"Job failed: {(fields.get('error') or {}).get('message', '')}",
                   level="error" if status == "failed" else "info")
        return True

    def create(self, body: Any) -> dict[str, Any]:
        from .. import openai_prep
        if not isinstance(body, dict):
            raise APIError(400, "the request body must be a JSON object")
        model = body.get("model")
        if not isinstance(model, str) or model not in self.registry.paths:
            raise APIError(400, f"Model {model!r} is not available for fine-tuning or does not exist "
                                f"(served here: {', '.join(self.registry.paths) or 'none'})",
                           param="model", code="model_not_available")
        method = body.get("method") or {}
        if not isinstance(method, dict) or not isinstance(method.get("supervised") or {}, dict):
            raise APIError(400, "'method' must be an object such as {\"type\": \"supervised\", \"supervised\": "
                                "{\"hyperparameters\": {...}}}", param="method")
        method_hp = (method.get("supervised") or {}).get("hyperparameters") or {}
        hp = body.get("hyperparameters") or {}
        for where, d in (("hyperparameters", hp), ("method.supervised.hyperparameters", method_hp)):
            if not isinstance(d, dict):
                raise APIError(400, f"'{where}' must be an object", param=where)
        hp = {**hp, **method_hp}
        for k, v in hp.items():
            if k not in ("n_epochs", "batch_size", "learning_rate_multiplier"):
                raise APIError(400, f"unknown hyperparameter {k!r}", param=f"hyperparameters.{k}")
            if v != "auto" and (not isinstance(v, (int, float)) or v <= 0):
                raise APIError(400, f"hyperparameter {k} must be 'auto' or a positive number", param=k)
        for key in ("training_file", "validation_file"):
            fid = body.get(key)
            if fid is None and key == "validation_file":
                continue
            if not isinstance(fid, str):
                raise APIError(400, f"'{key}' is required", param=key)
            meta = self.files.get(fid) if fid.startswith("file-") else None
            if meta is None:
                raise APIError(400, f"invalid {key}: {fid}", param=key, code="invalid_file")
            if meta["purpose"] != "fine-tune":
                raise APIError(400, f"{key} {fid} has purpose {meta['purpose']!r}, not 'fine-tune'", param=key)
        suffix = body.get("suffix")
        if suffix is not None and (not isinstance(suffix, str) or len(suffix) > 64):
            raise APIError(400, "suffix must be a string of at most 64 characters", param="suffix")
        extra = body.get("dte_training") or {}
        if not isinstance(extra, dict):
            raise APIError(400, "dte_training must be an object", param="dte_training")
        _ = openai_prep  # validation itself runs in the worker, as OpenAI's does (status validating_files)
        jid = new_id("ftjob-")
        job = {"id": jid, "object": "fine_tuning.job", "created_at": now(), "finished_at": None, "model": model,
               "fine_tuned_model": None, "organization_id": "org-local", "status": "validating_files",
               "hyperparameters": {"n_epochs": hp.get("n_epochs", "auto"), "batch_size": hp.get("batch_size", "auto"),
                                   "learning_rate_multiplier": hp.get("learning_rate_multiplier", "auto")},
               "training_file": body["training_file"], "validation_file": body.get("validation_file"),
               "result_files": [], "trained_tokens": None, "error": None, "seed": body.get("seed") or 0,
               "estimated_finish": None, "integrations": [], "metadata": body.get("metadata"),
               "user_provided_suffix": suffix, "method": {"type": "supervised"}}
        with self._lock:
            self.jobs[jid], self.events[jid], self.checkpoints[jid], self.extra[jid] = job, [], [], extra
        self.event(jid, f"Created fine-tuning job: {jid}")
        self.event(jid, "Validating training file: " + body["training_file"])
        self._q.put(jid)
        return self.get(jid)

    def get(self, jid: str) -> dict[str, Any]:
        with self._lock:
            if jid not in self.jobs:
                raise APIError(404, f"Could not find fine-tune job: {jid}", param="fine_tune_id",
                               code="fine_tune_not_found")
            return dict(self.jobs[jid])

    def cancel(self, jid: str) -> dict[str, Any]:
        job = self.get(jid)
        if job["status"] in ("succeeded", "failed", "cancelled"):
            raise APIError(400, f"Job {jid} has already {job['status']}; it cannot be cancelled", param="job_id")
        self._cancel.add(jid)
        if job["status"] in ("validating_files", "queued"):
            self._status(jid, "cancelled", finished_at=now())
        return self.get(jid)

    def list(self) -> list[dict[str, Any]]:
        with self._lock:
            return sorted((dict(j) for j in self.jobs.values()), key=lambda j: j["created_at"], reverse=True)

    def list_events(self, jid: str) -> list[dict[str, Any]]:
        self.get(jid)
        with self._lock:
            return list(reversed(self.events[jid]))

    def list_checkpoints(self, jid: str) -> list[dict[str, Any]]:
        self.get(jid)
        with self._lock:
            return list(reversed(self.checkpoints[jid]))

    # ------------------------------------------------------------------------------------------ worker
    def _worker(self) -> None:
        while True:
            jid = self._q.get()
            try:
                self._run(jid)
            except Exception as e:  # a crash fails the job with its reason; the server lives on
                traceback.print_exc()
                self._status(jid, "failed", finished_at=now(),
                             error={"code": "server_error", "message": f"{type(e).__name__}: {e}", "param": None})

    def _run(self, jid: str) -> None:
        from .. import openai_prep, teacher
        job = self.get(jid)
        if jid in self._cancel:
            return
        splits = {}
        for key in ("training_file", "validation_file"):
            if job[key]:
                rows = self.files.rows(job[key])
                report = openai_prep.validate_rows(rows, min_examples=1 if key == "validation_file" else None)
                if not report.ok:
                    self._status(jid, "failed", finished_at=now(), error={
                        "code": "invalid_training_file" if key == "training_file" else "invalid_validation_file",
                        "message": f"{key} {job[key]}: " + report.summary(), "param": key})
                    return
                splits[key] = [r["messages"] for r in rows]
        if jid in self._cancel or not self._status(jid, "queued"):
            return
        self.event(jid, "Files validated, job queued")
        train = splits["training_file"]
        val = splits.get("validation_file") or []
        hp = job["hyperparameters"]
        extra = {**self.train_defaults, **self.extra[jid]}
        n_epochs = hp["n_epochs"] if hp["n_epochs"] != "auto" else openai_prep.auto_epochs(len(train))
        batch = hp["batch_size"] if hp["batch_size"] != "auto" else int(extra.get("batch_size", 4))
        lr_mult = hp["learning_rate_multiplier"] if hp["learning_rate_multiplier"] != "auto" else 1.0
        settings = teacher.LoraSettings(
            rank=int(extra.get("lora_rank", 16)), alpha=int(extra.get("lora_alpha", 2 * int(extra.get("lora_rank", 16)))),
            learning_rate=float(extra.get("learning_rate", 1e-3)) * float(lr_mult), epochs=int(n_epochs),
            max_steps=int(extra.get("max_steps", 0)), batch_size=int(batch),
            micro_batch=int(extra.get("micro_batch", 0)),
            max_length=int(extra.get("max_length", 256)), fit=str(extra.get("fit", "cut")),
            eval_every=int(extra.get("eval_every", 0)),
            val_limit=int(extra.get("val_limit", 16)), seed=int(job["seed"]),
            threads=extra.get("threads") or self.registry.threads or 2,
            layers=int(extra.get("lora_layers", 0)), targets=str(extra.get("lora_targets", "")),
            patience=int(extra.get("patience", 0)), precision=str(extra.get("precision", "auto")))
        with self._lock:
            self.jobs[jid]["hyperparameters"] = {"n_epochs": int(n_epochs), "batch_size": int(batch),
                                                 "learning_rate_multiplier": float(lr_mult)}
        if not self._status(jid, "running"):
            return
        suffix = job["user_provided_suffix"] or "dte"
        name = f"ft:{job['model']}:local:{suffix}:{jid[6:14]}"
        out = self.root / "models" / jid
        metrics: list[dict[str, Any]] = []

        def on_event(e: dict[str, Any]) -> None:
            metrics.append(e)
            # OpenAI's metric event names (valid_loss, not val_loss), so one client loop reads both
            data = {"step": e["step"], "total_steps": e["total_steps"], "train_loss": e["train_loss"],
                    "valid_loss": e["val_loss"], "tokens": e["tokens"], "elapsed_s": e["elapsed_s"]}
            if e["step"] == 0:
                self.event(jid, f"Base model validation loss: {e['val_loss']:.4f}" if e["val_loss"] is not None
                           else "No validation file: no validation loss", data=data, type_="metrics")
                return
            msg = f"Step {e['step']}/{e['total_steps']}: training loss={e['train_loss']:.4f}"
            if e["val_loss"] is not None:
                msg += f", validation loss={e['val_loss']:.4f}"
            self.event(jid, msg, data=data, type_="metrics")

        def ckpt_dir(epoch: int) -> Path:
            return self.root / "models" / f"{jid}-epoch{epoch}"

        result = teacher.finetune(self.registry.path(job["model"]), train, val, out, settings, on_event=on_event,
                                  should_stop=lambda: jid in self._cancel, checkpoint_dir=ckpt_dir,
                                  device=self.registry.device)  # where the server runs its models
        if result["stopped"]:
            self._status(jid, "cancelled", finished_at=now())  # no-op when cancel() already marked it
            return
        for ck in result["checkpoints"]:
            self._checkpoint(jid, f"{name}:ckpt-step-{ck['step']}", ck["path"], ck["step"], metrics)
        self._checkpoint(jid, name, out, result["steps"], metrics, register=False)
        self.registry.add(name, out, owned_by="user")
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["step", "train_loss", "valid_loss", "tokens", "elapsed_s"])
        for e in metrics:
            w.writerow([e["step"], e["train_loss"], e["val_loss"], e["tokens"], e["elapsed_s"]])
        res = self.files.create("step_metrics.csv", "fine-tune-results", buf.getvalue().encode(), internal=True)
        with self._lock:
            self.jobs[jid]["result_files"] = [res["id"]]
            self.jobs[jid]["trained_tokens"] = result["tokens"]
            # not an OpenAI field: where the merged model lies, for notebooks on this machine (model_info.json)
            self.jobs[jid]["dte_output_dir"] = str(out)
            self.jobs[jid]["dte_val_loss_base"] = result["val_loss_base"]
            self.jobs[jid]["dte_val_loss_final"] = result["val_loss_final"]
        self.event(jid, f"New fine-tuned model created: {name}")
        self._status(jid, "succeeded", fine_tuned_model=name, finished_at=now())

    def _checkpoint(self, jid: str, name: str, path: Any, step: int, metrics: list[dict], register: bool = True):
        if register:
            self.registry.add(name, path, owned_by="user")
        last = next((e for e in reversed(metrics) if e["step"] <= step and e["train_loss"] is not None), {})
        val = next((e["val_loss"] for e in reversed(metrics) if e["step"] <= step and e["val_loss"] is not None), None)
        ck = {"id": new_id("ftckpt-"), "object": "fine_tuning.job.checkpoint", "created_at": now(),
              "fine_tuned_model_checkpoint": name, "fine_tuning_job_id": jid, "step_number": step,
              "metrics": {"step": step, "train_loss": last.get("train_loss"), "valid_loss": val,
                          "full_valid_loss": val}}
        with self._lock:
            self.checkpoints[jid].append(ck)


class Batches:
    """Batch jobs over ``/v1/chat/completions``, run by one worker thread through ``complete(body)``; each stays
    ``in_progress`` for at least ``min_seconds`` (fault injection's ``batch_ms``: a slow provider, for tests)."""

    def __init__(self, files: Files, complete: Callable[[dict[str, Any]], dict[str, Any]], min_seconds: float = 0.0):
        self.files, self.complete, self.min_seconds = files, complete, min_seconds
        self.batches: dict[str, dict[str, Any]] = {}
        self._cancel: set[str] = set()
        self._q: queue.Queue[str] = queue.Queue()
        self._lock = threading.Lock()
        threading.Thread(target=self._worker, name="dte-batches", daemon=True).start()

    def create(self, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise APIError(400, "the request body must be a JSON object")
        fid = body.get("input_file_id")
        if not isinstance(fid, str):
            raise APIError(400, "'input_file_id' is required", param="input_file_id")
        meta = self.files.get(fid)
        if meta["purpose"] != "batch":
            raise APIError(400, f"file {fid} has purpose {meta['purpose']!r}, not 'batch'", param="input_file_id")
        if body.get("endpoint") != "/v1/chat/completions":
            raise APIError(400, f"endpoint {body.get('endpoint')!r} is not supported here: use /v1/chat/completions",
                           param="endpoint")
        if body.get("completion_window") != "24h":
            raise APIError(400, "completion_window must be '24h'", param="completion_window")
        bid = new_id("batch_")
        b = {"id": bid, "object": "batch", "endpoint": body["endpoint"], "errors": None, "input_file_id": fid,
             "completion_window": "24h", "status": "validating", "output_file_id": None, "error_file_id": None,
             "created_at": now(), "in_progress_at": None, "expires_at": now() + 86400, "finalizing_at": None,
             "completed_at": None, "failed_at": None, "expired_at": None, "cancelling_at": None,
             "cancelled_at": None, "request_counts": {"total": 0, "completed": 0, "failed": 0},
             "metadata": body.get("metadata")}
        with self._lock:
            self.batches[bid] = b
        self._q.put(bid)
        return self.get(bid)

    def get(self, bid: str) -> dict[str, Any]:
        with self._lock:
            if bid not in self.batches:
                raise APIError(404, f"No batch found with id '{bid}'", param="batch_id", code="batch_not_found")
            return json.loads(json.dumps(self.batches[bid]))

    def list(self) -> list[dict[str, Any]]:
        with self._lock:
            return sorted((dict(b) for b in self.batches.values()), key=lambda b: b["created_at"], reverse=True)

    def cancel(self, bid: str) -> dict[str, Any]:
        b = self.get(bid)
        if b["status"] in ("completed", "failed", "cancelled", "expired"):
            raise APIError(409, f"Batch {bid} is {b['status']} and cannot be cancelled", param="batch_id")
        self._cancel.add(bid)
        self._set(bid, status="cancelling", cancelling_at=now())
        return self.get(bid)

    def _set(self, bid: str, **fields: Any) -> None:
        with self._lock:
            self.batches[bid].update(fields)

    def _worker(self) -> None:
        while True:
            bid = self._q.get()
            try:
                self._run(bid)
            except Exception as e:
                traceback.print_exc()
                self._set(bid, status="failed", failed_at=now(),
                          errors={"object": "list", "data": [{"code": "server_error", "message": str(e)}]})

    def _run(self, bid: str) -> None:
        b = self.get(bid)
        lines, problems = [], []
        for n, raw in enumerate(self.files.content(b["input_file_id"]).decode("utf-8", "replace").splitlines(), 1):
            if not raw.strip():
                continue
            try:
                req = json.loads(raw)
                ok = isinstance(req, dict) and isinstance(req.get("custom_id"), str) and req.get("method") == "POST" \
                    and req.get("url") == b["endpoint"] and isinstance(req.get("body"), dict)
            except json.JSONDecodeError:
                ok = False
            if not ok:
                problems.append({"code": "invalid_request", "line": n, "param": None,
                                 "message": "each line needs custom_id, method 'POST', url equal to the batch "
                                            "endpoint, and an object body"})
            else:
                lines.append(req)
        if problems or not lines:
            self._set(bid, status="failed", failed_at=now(), errors={"object": "list", "data": problems or [
                {"code": "empty_file", "line": None, "param": None, "message": "the input file has no requests"}]})
            return
        self._set(bid, status="in_progress", in_progress_at=now(),
                  request_counts={"total": len(lines), "completed": 0, "failed": 0})
        started = time.monotonic()
        results: list[tuple[str, dict] | None] = [None] * len(lines)
        counts = {"done": 0, "failed": 0}
        count_lock = threading.Lock()

        def one(k: int) -> None:  # requests run concurrently: the engine batches them like any other clients'
            if bid in self._cancel:
                return
            req, rid = lines[k], new_id("req_")
            try:
                body = self.complete(req["body"])
                results[k] = ("out", {"id": new_id("batch_req_"), "custom_id": req["custom_id"],
                                      "response": {"status_code": 200, "request_id": rid, "body": body},
                                      "error": None})
            except APIError as e:
                results[k] = ("err", {"id": new_id("batch_req_"), "custom_id": req["custom_id"],
                                      "response": {"status_code": e.status, "request_id": rid, "body": e.body()},
                                      "error": None})
            with count_lock:
                counts["done" if results[k][0] == "out" else "failed"] += 1
                self._set(bid, request_counts={"total": len(lines), "completed": counts["done"],
                                               "failed": counts["failed"]})
        with ThreadPoolExecutor(max_workers=BATCH_CONCURRENCY, thread_name_prefix="dte-batch") as pool:
            list(pool.map(one, range(len(lines))))
        time.sleep(max(0.0, self.min_seconds - (time.monotonic() - started)))
        out = [r[1] for r in results if r and r[0] == "out"]
        err = [r[1] for r in results if r and r[0] == "err"]
        self._set(bid, status="finalizing", finalizing_at=now())
        fields: dict[str, Any] = {}
        if out:
            fields["output_file_id"] = self.files.create(f"{bid}_output.jsonl", "batch_output", _jsonl(out),
                                                         internal=True)["id"]
        if err:
            fields["error_file_id"] = self.files.create(f"{bid}_error.jsonl", "batch_output", _jsonl(err),
                                                        internal=True)["id"]
        if bid in self._cancel:
            self._set(bid, status="cancelled", cancelled_at=now(), **fields)
        else:
            self._set(bid, status="completed", completed_at=now(), **fields)


def _jsonl(rows: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()
