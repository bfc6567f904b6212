"""The coordinator of one job: lists the input into units, starts and supervises the workers, reaps
poison units (bisecting them down to the one file that kills its worker), publishes the job's
events, and writes ``OUT/stats.json`` and the report at the end.

It runs on the thread that calls :meth:`Coordinator.run`; :meth:`Coordinator.stop` (any thread,
e.g. a signal handler) asks it to drain: workers finish the units they hold and leave; a second
stop kills them (their units are redone by the next run).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from typing import Any, TextIO

from facefleet.engine import events as ev
from facefleet.engine.executors import Executor, WorkerHandle
from facefleet.engine.jobplan import JobPlan
from facefleet.engine.layout import EngineError, disk_message
from facefleet.engine.listing import Lister
from facefleet.engine.queue import QueueError, WorkQueue, open_queue
from facefleet.engine.totals import RunSummary, build_stats, live_session, save_session, write_stats
from facefleet.engine.worker import BATCH_STAGES, EXIT_OUTPUT, owner_id
from facefleet.engine.worker.poison import reap_poison
from facefleet.platforms import DeviceProfile
from facefleet.platforms.plan import worker_names


class Coordinator:
    def __init__(self, plan: JobPlan, executor: Executor, publish: Callable[[ev.Event], None]) -> None:
        self.plan = plan
        self.executor = executor
        self._publish = publish
        self.job_id = plan.job_id
        self.handles: dict[str, WorkerHandle] = {}
        self.reaped: set[int] = set()
        self.crashes = 0  # worker deaths since a unit last finished (the restart budget)
        self.restarts = 0
        self.stop_requests = 0
        self.stop_signal: str | None = None
        self.fatal: str | None = None
        self.t0 = time.time()
        self.last_event = 0
        self.old_owners: set[str] = set()
        self.throughput: list[dict[str, float]] = []
        self.batch_seconds: list[float] = []
        self.batch_done: list[list[Any]] = []
        self.batch_stages: list[list[float]] = []
        self._rates: dict[str, tuple[float, int]] = {}
        self.log: TextIO | None = None
        if plan.log_json is not None:
            try:
                plan.log_json.parent.mkdir(parents=True, exist_ok=True)
                self.log = plan.log_json.open("a", encoding="utf-8")
            except OSError as e:
                raise EngineError(f"cannot open --log-json {plan.log_json}: {e.strerror or e}") from None
        self.q: WorkQueue = open_queue(plan.queue_url)

    # -- public ----------------------------------------------------------------------------
    def stop(self, signal_name: str | None = None) -> None:
        """Drain (first call) or kill the workers (second call). Safe from any thread."""
        self.stop_requests += 1
        self.stop_signal = self.stop_signal or signal_name
        if self.stop_requests == 1:
            self._note("interrupted: finishing the units in progress (Ctrl-C again to stop now)")
        else:
            self._note("stopping now; unfinished units will be redone by the next run")
            for h in list(self.handles.values()):
                h.kill()

    def run(self) -> RunSummary:
        q, plan = self.q, self.plan
        try:
            # OUT's lock covers a queue inside OUT; a networked queue may be shared by other OUTs
            live = live_session(q, self.t0) if "://" in plan.queue_url else None
            if live is not None:
                self._close()
                raise EngineError(
                    f"another run is using the work queue {plan.record.get('queue') or plan.queue_url} "
                    f"(its coordinator was seen {self.t0 - float(live['end']):.0f} s ago); wait for it to end"
                )
            c = q.counts()
            self.old_owners = {w["owner"] for w in q.workers()}  # earlier sessions' workers
            from facefleet.engine.layout import publish_run

            publish_run(q, plan.record)  # the run's settings, for external workers on any host
            q.set_meta("drain", "0")
            q.set_meta("listing_done", "0")  # every session lists INPUT again: new files are picked up
            self.last_event = q.last_event_id()
            self.session = save_session(
                q, -1, {"start": self.t0, "end": self.t0, "images": 0, "status": "running"}
            )
        except QueueError as e:
            self._close()
            raise EngineError(disk_message(str(e), plan.out)) from None
        units_before = c["done"]["units"] + c["failed"]["units"]
        self.done_before = c["done"]["images"] + c["failed"]["images"]
        self._emit("run_started", {"config": plan.record, "units_done_before": units_before})
        lister = Lister(plan, stop=lambda: bool(self.stop_requests or self.fatal), note=self._note)
        lister.start()
        sampler = self._start_sampler()
        interrupted = False
        try:
            self._loop(lister)
            interrupted = bool(self.stop_requests) and not (
                q.get_meta("listing_done") == "1" and q.remaining() == 0
            )
        except QueueError as e:
            self.fatal = self.fatal or disk_message(str(e), plan.out)
        finally:
            self._shutdown(lister, sampler)
        if lister.error is not None and not self.fatal:
            self.fatal = lister.error
        return self._finish(sampler, units_before, interrupted, lister)

    # -- the loop --------------------------------------------------------------------------
    def _loop(self, lister: Lister) -> None:
        q = self.q
        tick = last_progress = 0.0
        while True:
            now = time.time()
            self._drain_events()
            self._reap_dead()
            self._reap_poison()
            if now - tick >= 1.0:
                tick = now
                self._sample(now)
                save_session(q, self.session, self._session_record(now))
            if now - last_progress >= 0.5:
                last_progress = now
                self._progress(now)
            if self.fatal or lister.error is not None:
                self._request_drain()
            elif not self.handles and not self.stop_requests and q.remaining() > 0:
                # workers start once there is work: a re-run with nothing new starts none
                for name, prof in zip(worker_names(self.plan.profiles), self.plan.profiles, strict=True):
                    self._start_worker(name, prof)
            alive = [h for h in self.handles.values() if h.exitcode is None]
            if not alive:
                listed = not lister.alive
                if self.stop_requests or self.fatal or lister.error or (listed and q.remaining() == 0):
                    return
                if listed and self.crashes > self.plan.max_restarts:
                    self.fatal = "every worker died and the restart budget is used up"
                    return
            time.sleep(0.2)

    def _shutdown(self, lister: Lister, sampler: Any) -> None:
        for h in self.handles.values():
            if h.exitcode is None:
                h.kill()
            h.join(5)
        self.executor.close()
        lister.join()
        try:
            self._drain_events()
            self._reap_dead()
            self._reap_poison()
        except QueueError as e:
            self.fatal = self.fatal or disk_message(str(e), self.plan.out)
        if sampler is not None:
            sampler.stop()

    # -- workers ---------------------------------------------------------------------------
    def _start_worker(self, name: str, prof: DeviceProfile) -> None:
        self.handles[name] = self.executor.start(self.plan.worker_spec(name, prof))

    def _reap_dead(self) -> None:
        q = self.q
        for name, h in list(self.handles.items()):
            code = h.exitcode
            if code is None or id(h) in self.reaped:
                continue
            self.reaped.add(id(h))
            owner = owner_id(name, h.pid or 0)
            released = 0
            if code == 0:
                self._emit("worker_exited", {"worker": name, "pid": h.pid})
            else:
                released = q.release_owner(owner, f"worker {name} died (exit code {code})")
                self._emit(
                    "worker_died",
                    {"worker": name, "pid": h.pid, "exit_code": code, "units_released": released},
                )
            restart = self._should_restart(name, h, code, owner)
            self._publish(ev.WorkerDown(self.job_id, time.time(), name, h.pid, code, released, restart))
            if restart:
                self.crashes += 1
                self.restarts += 1
                if code != 0:
                    self._note(f"worker {name} died (exit code {code}); restarting it")
                self._start_worker(name, h.spec.profile)
                self._emit("worker_restarted", {"worker": name, "pid": self.handles[name].pid})

    def _should_restart(self, name: str, h: WorkerHandle, code: int, owner: str) -> bool:
        q = self.q
        if self.stop_requests or self.fatal:
            return False
        if code == EXIT_OUTPUT:
            self.fatal = f"cannot write to {self.plan.out} (disk full or not writable)"
            return False
        if code != 0 and not any(w["owner"] == owner for w in q.workers()):
            # died before registering: it could not build its pipeline; restarting will not help
            self.fatal = (
                f"worker {name} ({h.spec.profile.device}) failed to start (exit code {code}); "
                "see its error above"
            )
            return False
        if q.remaining() == 0 and q.get_meta("listing_done") == "1":
            return False
        if self.crashes >= self.plan.max_restarts:
            self._note(f"worker {name} died (exit code {code}); restart budget used up")
            return False
        return True

    def _reap_poison(self) -> None:
        """Units that used up their attempts: cut in halves (one file that kills its worker ends up
        alone), and a unit of one file is failed with an error row (:func:`reap_poison`, which the
        supervisors of external worker hosts run too)."""
        try:
            outcomes = reap_poison(self.q, self.plan.out, self.plan.attempts)
        except OSError as e:
            self.fatal = f"cannot write a poison unit's manifest under {self.plan.out}: {e.strerror or e}"
            return
        for o in outcomes:
            if o.action == "split":
                self._emit("unit_split", {"unit": o.unit, "halves": list(o.halves), "reason": o.error})
                self._publish(ev.UnitDone(self.job_id, time.time(), o.unit, "split", o.items))
            else:
                self._note(f"quarantined {o.items} image(s) that crashed their worker: {o.source}")

    def _request_drain(self) -> None:
        with contextlib.suppress(QueueError):
            self.q.set_meta("drain", "1")

    # -- events, progress ------------------------------------------------------------------
    def _note(self, message: str, fatal: bool = False) -> None:
        self._publish(ev.Error(self.job_id, time.time(), message, fatal))

    def _emit(self, kind: str, data: dict[str, Any], t: float | None = None) -> None:
        if self.log is None:
            return
        rec = {"t": round(t if t is not None else time.time(), 4), "event": kind, **data}
        try:
            self.log.write(json.dumps(rec, default=str) + "\n")
            self.log.flush()
        except OSError:
            pass

    def _drain_events(self) -> None:
        if self.stop_requests:
            self._request_drain()
        for eid, t, kind, data in self.q.events_after(self.last_event):
            self.last_event = eid
            if kind == "unit_done":
                self.crashes = 0
                self._unit_done(t, data)
            elif kind == "unit_failed":
                self._publish(
                    ev.UnitDone(
                        self.job_id,
                        t,
                        str(data.get("unit")),
                        "failed",
                        int(data.get("images", 0)),
                        0,
                        int(data.get("failed", 0)),
                    )
                )
            elif kind == "worker_started":
                self._publish(
                    ev.WorkerUp(
                        self.job_id,
                        t,
                        str(data.get("worker")),
                        str(data.get("device")),
                        int(data.get("pid", 0)),
                    )
                )
            if self.log is not None:
                drop = ("batch_seconds", "batch_done", "batch_stages")
                self._emit(kind, {k: v for k, v in data.items() if k not in drop}, t)

    def _unit_done(self, t: float, data: dict[str, Any]) -> None:
        self.batch_seconds.extend(data.get("batch_seconds", []))
        if len(self.batch_seconds) > 100_000:
            self.batch_seconds = self.batch_seconds[::2]
        if len(self.batch_done) < 200_000:  # a million images are ~8,000 batches
            w = str(data.get("worker", ""))
            self.batch_done.extend([round(bt - self.t0, 4), n, w] for bt, n in data.get("batch_done", []))
        if len(self.batch_stages) < 200_000:
            self.batch_stages.extend([round(r[0] - self.t0, 4), *r[1:]] for r in data.get("batch_stages", []))
        self._publish(
            ev.UnitDone(
                self.job_id,
                t,
                str(data.get("unit")),
                "done",
                int(data.get("images", 0)),
                int(data.get("faces", 0)),
                int(data.get("failed", 0)),
                data.get("worker"),
                data,
            )
        )

    def _session_workers(self) -> list[dict[str, Any]]:
        return [w for w in self.q.workers() if w["owner"] not in self.old_owners]

    def _session_record(self, now: float) -> dict[str, Any]:
        ws = self._session_workers()
        return {
            "start": self.t0,
            "end": now,
            "images": sum(w["images"] for w in ws),
            "faces": sum(w["faces"] for w in ws),
            "failed": sum(w["failed"] for w in ws),
            "status": "running",
        }

    def _sample(self, now: float) -> None:
        ws = self._session_workers()
        rec = {
            "t": round(now - self.t0, 3),
            "images": sum(w["images"] for w in ws),
            "faces": sum(w["faces"] for w in ws),
        }
        self.throughput.append(rec)
        if len(self.throughput) > 20_000:
            self.throughput = self.throughput[::2]

    def _progress(self, now: float) -> None:
        ws = self._session_workers()
        images = sum(w["images"] for w in ws)
        faces = sum(w["faces"] for w in ws)
        dt = max(now - self.t0, 1e-6)
        total = self.q.get_meta("listed_images")
        by_name: dict[str, int] = {}
        for w in ws:  # per GPU: gpu0 and gpu0.1 (two workers of GPU 0) add up
            key = str(w["name"]).split(".", 1)[0]
            by_name[key] = by_name.get(key, 0) + w["images"]
        per = []
        for name, n in sorted(by_name.items()):
            t_prev, n_prev = self._rates.get(name, (self.t0, 0))
            per.append((name, (n - n_prev) / max(now - t_prev, 1e-6)))
            if now - t_prev >= 2.0:
                self._rates[name] = (now, n)
        self._publish(
            ev.Progress(
                self.job_id,
                now,
                self.done_before + images,
                int(total) if total else None,
                self.q.get_meta("listing_done") == "1",
                images,
                faces,
                sum(w["failed"] for w in ws),
                dt,
                images / dt,
                faces / dt,
                tuple(per),
            )
        )

    def _start_sampler(self) -> Any:
        try:
            from facefleet.monitor.gpu import GpuSampler

            gpus = [int(p.device.split(":")[1]) for p in self.plan.profiles if p.device.startswith("cuda:")]
            return GpuSampler(1.0, gpus=gpus or None).start()
        except Exception:
            return None

    # -- the end ---------------------------------------------------------------------------
    def _finish(self, sampler: Any, units_before: int, interrupted: bool, lister: Lister) -> RunSummary:
        q, plan = self.q, self.plan
        now = time.time()
        status = "interrupted" if interrupted else ("failed" if self.fatal else "completed")
        summary = RunSummary(
            out_dir=plan.out,
            interrupted=interrupted,
            job_id=self.job_id,
            signal_name=self.stop_signal,
            seconds=now - self.t0,
        )
        try:
            self._sample(now)
            save_session(q, self.session, {**self._session_record(now), "status": status})
            extra: dict[str, Any] = {
                "session_wall_seconds": round(now - self.t0, 3),
                "worker_restarts": self.restarts,
                "throughput": self.throughput,
                "batch_seconds": [round(b, 5) for b in self.batch_seconds],
                "batch_done": sorted(self.batch_done),
                "batch_stages": {"columns": list(BATCH_STAGES), "rows": sorted(self.batch_stages)},
                "skipped_inputs": lister.skipped_report(),
                "manifest_repairs": lister.repairs,
                **plan.extra,
            }
            if sampler is not None:
                with contextlib.suppress(Exception):
                    extra["gpu_samples"] = sampler.to_dict()
            stats = build_stats(q, plan.out, plan.record, status=status, extra=extra)
        except QueueError as e:
            self._close()
            raise EngineError(disk_message(str(e), plan.out)) from None
        try:
            path = write_stats(plan.out, stats, plan.report)
        except EngineError as e:
            self.fatal = self.fatal or str(e)
            path = None
        t = stats["totals"]
        from dataclasses import replace

        summary = replace(
            summary,
            images=t["images"],
            faces=t["faces"],
            no_face=t["no_face"],
            failed=t["failed"],
            units_done=t["units_done"],
            units_failed=t["units_failed"],
            units_skipped=units_before,
            failed_by_reason=dict(t["failed_by_reason"]),
            stats_path=path,
            skipped_inputs=lister.skipped_count,
        )
        self._emit(
            "run_done",
            {
                "status": status,
                **{k: t[k] for k in ("images", "faces", "no_face", "failed")},
                "seconds": round(now - self.t0, 3),
            },
        )
        self._close()
        if self.fatal:
            raise EngineError(self.fatal)
        return summary

    def _close(self) -> None:
        if self.log is not None:
            self.log.close()
            self.log = None
        self.q.close()
