"""The export-job runner: one asyncio task per gateway process takes queued jobs from the store and writes
each export into the lake at `<lake>/exports/<org|all>/<job_id>/<attempt>/<file>`.

Any number of replicas share the store: a job is claimed with a lease (renewed while the export runs),
and a job whose runner died is claimed again once its lease expires and redone from scratch, up to
MAX_ATTEMPTS claims. A job is marked succeeded only after its complete file is in the lake (local: temp
name + rename; S3: the object appears when its upload completes), so a partial file is never offered;
each attempt writes under its own directory, so a late runner that lost its lease cannot overwrite the
file of the attempt that won.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import shutil
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pyarrow as pa
import pyarrow.fs as pafs
from aiohttp import web

from analytics_lake.errors import LakeError
from analytics_lake.exports import ExportResult, ExportSpec, spec_from_dict, write_export
from analytics_lake.location import Lake
from gateway.routing.registry import STORE_ERRORS
from gateway.store.sql_exports import ExportJob, ExportStore

if TYPE_CHECKING:
    from analytics_lake.query import LakeQuery

log = logging.getLogger(__name__)

T = TypeVar("T")
MAX_ATTEMPTS = 3
EXPORTS_DIR = "exports"
UPLOAD_CHUNK = 8 * 2**20
STALE_WORK_S = 86_400  # temp dirs left by a crashed process are removed after a day


def export_dir(lake: Lake, job: ExportJob) -> str:
    return f"{lake.base}/{EXPORTS_DIR}/{job.org_id or 'all'}/{job.id}"


def object_path(lake: Lake, job: ExportJob, spec: ExportSpec) -> str:
    """Where this attempt of `job` writes its file."""
    return f"{export_dir(lake, job)}/{job.attempts}/{spec.filename()}"


def new_owner() -> str:
    """A lease owner id: which process (host, pid) holds a job, unique across restarts."""
    return f"{socket.gethostname()[:64]}:{os.getpid()}:{secrets.token_hex(4)}"


async def in_daemon_thread(fn: Callable[..., T], *args: Any) -> T:
    """`fn(*args)` in a daemon thread: unlike asyncio.to_thread, a long export never holds up the exit of
    a stopping process (its job is released and redone elsewhere)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def target() -> None:
        try:
            result, error = fn(*args), None
        except BaseException as e:  # handed to the awaiting task, which decides
            result, error = None, e
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody waits any more
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=target, name="export-job", daemon=True).start()
    return await future


def _place_local(lake: Lake, q: LakeQuery, spec: ExportSpec, path: str) -> ExportResult:
    from analytics_lake.writer import fsync_dir

    directory, name = path.rsplit("/", 1)
    os.makedirs(directory, exist_ok=True)
    tmp = f"{directory}/.tmp-{uuid.uuid4().hex}-{name}"
    try:
        result = write_export(q, spec, tmp)  # complete and fsynced when it returns
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    fsync_dir(directory)
    return result


def _place_remote(lake: Lake, q: LakeQuery, spec: ExportSpec, path: str, work_dir: Path) -> ExportResult:
    work_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="export-", dir=work_dir))
    try:
        local = scratch / path.rsplit("/", 1)[1]
        result = write_export(q, spec, local)
        # The object appears only when the stream is closed after the last byte; if this attempt dies
        # halfway, its directory is never offered (the job is not marked succeeded).
        with open(local, "rb") as src, lake.fs.open_output_stream(path) as out:
            while chunk := src.read(UPLOAD_CHUNK):
                out.write(chunk)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return result


def produce(lake: Lake, spec: ExportSpec, path: str, work_dir: Path) -> ExportResult:
    """Write the export of `spec` completely at `path` in the lake and check that the whole file is there.

    Raises:
        LakeError: the lake cannot be read, or the file in the lake is not the one written.
        OSError, pyarrow.ArrowException: writing or uploading failed.
    """
    from analytics_lake.query import LakeQuery  # DuckDB loads with the first export, not in every worker

    with LakeQuery(lake, threads=1) as q:  # one core: the gateway's requests come first
        result = _place_local(lake, q, spec, path) if lake.is_local else _place_remote(lake, q, spec, path, work_dir)
    info = lake.fs.get_file_info(path)
    if info.type != pafs.FileType.File or info.size != result.bytes:
        raise LakeError(f"the export in the lake has {info.size} bytes, not the {result.bytes} written")
    return result


def remove_other_attempts(lake: Lake, job: ExportJob) -> None:
    """Best effort: drop what earlier (crashed or superseded) attempts of `job` left in the lake."""
    root = export_dir(lake, job)
    try:
        entries = lake.fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
    except (OSError, pa.ArrowException) as e:
        log.info("export %s: could not list earlier attempts: %s", job.id, e)
        return
    for entry in entries:
        if entry.type == pafs.FileType.Directory and entry.base_name != str(job.attempts):
            try:
                lake.fs.delete_dir(entry.path)
            except (OSError, pa.ArrowException) as e:
                log.info("export %s: could not remove %s: %s", job.id, entry.path, e)


def _remove_stale_work(work_dir: Path) -> None:
    if not work_dir.is_dir():
        return
    cutoff = time.time() - STALE_WORK_S
    for entry in work_dir.iterdir():
        with contextlib.suppress(OSError):
            if entry.stat().st_mtime < cutoff:
                shutil.rmtree(entry, ignore_errors=True)


class ExportRunner:
    """Runs export jobs of the shared store, one at a time, in this process.

    Args:
        store: the store (its ExportStore part).
        lake: where exports are read from and written to.
        work_dir: local scratch space for exports uploaded to S3.
        lease_s: how long a claim lasts without renewal (renewed every third of it).
        poll_s: how often the store is asked for work when this process was not told of any (`wake`).
        max_attempts: claims per job before it fails.
        retry_s: back-off before a failed attempt is retried (times the attempt number).
        stop_grace_s: how long `stop` waits for a running job before handing it back to the queue.
    """

    def __init__(self, store: ExportStore, lake: Lake, *, work_dir: Path, lease_s: float = 60.0,
                 poll_s: float = 5.0, max_attempts: int = MAX_ATTEMPTS, retry_s: float = 10.0,
                 stop_grace_s: float = 5.0, owner: str | None = None) -> None:
        self.owner = owner or new_owner()
        self._store = store
        self._lake = lake
        self._work_dir = Path(work_dir)
        self._lease_s = lease_s
        self._poll_s = poll_s
        self._max_attempts = max_attempts
        self._retry_s = retry_s
        self._stop_grace_s = stop_grace_s
        self._wake = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task | None = None
        self._job: ExportJob | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name="export-runner")

    def wake(self) -> None:
        """A job was just queued: look now rather than at the next poll."""
        self._wake.set()

    async def stop(self) -> None:
        """Stop taking jobs; let the running one finish for `stop_grace_s`, else hand it back unfinished."""
        self._stopping = True
        self._wake.set()
        task = self._task
        if task is None:
            return
        with contextlib.suppress(TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(asyncio.shield(task), self._stop_grace_s)
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def run(self) -> None:
        await asyncio.to_thread(_remove_stale_work, self._work_dir)
        while not self._stopping:
            self._wake.clear()  # before looking: a wake-up from now on is not lost
            try:
                job = await self._store.claim_export(self.owner, lease_s=self._lease_s,
                                                     max_attempts=self._max_attempts)
            except STORE_ERRORS as e:
                log.warning("export runner: the store did not answer (%s); trying again", type(e).__name__)
                job = None
            if job is None:
                await self._idle()
                continue
            try:
                await self.run_job(job)
            except STORE_ERRORS as e:  # the outcome was not recorded: the lease expires, the job is redone
                log.warning("export %s: could not record the outcome (%s)", job.id, type(e).__name__)
                await self._idle()
            except Exception:  # a bug: logged with its traceback; the lease expires and the job is redone
                log.exception("export %s: the runner failed", job.id)
                await self._idle()

    async def _idle(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), self._poll_s)

    async def _renew(self, job: ExportJob) -> None:
        """Keep the lease while the export runs; a lost lease is logged (the finish will then be refused)."""
        while True:
            await asyncio.sleep(self._lease_s / 3)
            try:
                if not await self._store.renew_export(job.id, self.owner, lease_s=self._lease_s):
                    log.warning("export %s: lease lost to another runner; this attempt's result will be dropped",
                                job.id)
                    return
            except STORE_ERRORS as e:
                log.warning("export %s: could not renew the lease (%s)", job.id, type(e).__name__)

    async def run_job(self, job: ExportJob) -> ExportJob | None:
        """Produce `job` (claimed by this runner) and record the outcome; the job as stored after, or None
        when it was no longer ours."""
        renewer = asyncio.create_task(self._renew(job))
        try:
            spec = spec_from_dict(job.spec)
            path = object_path(self._lake, job, spec)
            result = await in_daemon_thread(produce, self._lake, spec, path, self._work_dir)
        except asyncio.CancelledError:
            await self._release(job)
            raise
        except Exception as e:  # noqa: BLE001 - any failure of one job is recorded on it, the runner goes on
            return await self._fail(job, e)
        finally:
            renewer.cancel()
        done = await self._store.finish_export(
            job.id, self.owner, object_path=path, rows=result.rows, requests=result.requests,
            cost_micros=result.cost_micros, size_bytes=result.bytes, sha256=result.sha256)
        if done is None:
            log.warning("export %s: finished after losing its lease; another runner's attempt counts", job.id)
            return None
        log.info("export %s succeeded: %d rows, %d requests, %d bytes", job.id, result.rows, result.requests,
                 result.bytes)
        await asyncio.to_thread(remove_other_attempts, self._lake, done)
        return done

    async def _fail(self, job: ExportJob, error: Exception) -> ExportJob | None:
        expected = isinstance(error, LakeError | OSError | pa.ArrowException)
        log.log(logging.WARNING if expected else logging.ERROR, "export %s attempt %d failed: %s: %s", job.id,
                job.attempts, type(error).__name__, error, exc_info=None if expected else error)
        # What the job shows its caller: the kind of failure, without this server's file paths.
        detail = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        reason = f"{type(error).__name__}: {detail}" if expected else f"internal error ({type(error).__name__})"
        retry = self._retry_s * job.attempts if job.attempts < self._max_attempts else None
        if retry is None:
            reason = f"failed after {job.attempts} attempts: {reason}"
        return await self._store.fail_export(job.id, self.owner, reason, retry_after_s=retry)

    async def _release(self, job: ExportJob) -> None:
        try:
            await self._store.release_export(job.id, self.owner)
        except STORE_ERRORS as e:  # its lease expires and another runner takes it then
            log.warning("export %s: could not hand the job back (%s)", job.id, type(e).__name__)


RUNNER: web.AppKey[ExportRunner] = web.AppKey("analytics_export_runner", ExportRunner)
