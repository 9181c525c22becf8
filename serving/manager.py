"""Which versions of which models are served: loading, warmup, retries, labels, unloading.

Like TF Serving's ServerCore / AspiredVersionsManager:

- a model folder's numeric sub-folders are its versions (`00000123` is version 123, loaded from that
  folder); the version policy (`latest` N, `all`, `specific`) says which to serve;
- a new version is loaded (and, with `--enable_model_warmup`, its warmup records replayed) *before* it
  is published; the table of served versions is replaced in one assignment, and a request keeps the
  version it resolved (`LoadedVersion.use()`), so a swap never fails a request in flight;
- a failed load is retried `max_num_load_retries` times, `load_retry_interval_micros` apart, on the
  poll thread (state LOADING with the error meanwhile, END with the error after the last try); at
  start-up the server waits for the initial versions' retries and refuses to start when a model has none
  AVAILABLE (`await_initial_versions`, TF Serving's behaviour); a reload (gRPC or a changed config
  file) waits for the models it adds and fails with their load error, the config staying applied;
- an unloaded version is closed on its own thread (UNLOADING -> END): its session, batch threads and
  downloaded copy are freed once its last request has finished;
- labels are checked as TF Serving's `ServerCore::ReloadConfig` checks them (`UpdateModelVersionLabelMap`,
  run *before* `AddModelsViaModelConfigList`): against the versions AVAILABLE when the config arrives and
  the label map in force, so a label naming a version the same config would load is refused
  (FAILED_PRECONDITION), nothing of that config is loaded, and the labels in force stay. That is also
  true of the first config (nothing available yet: the server does not start) and of every poll of a
  config file. `--allow_version_labels_for_unavailable_models` lets a *new* label, or one keeping its
  version, wait for it; moving a label to another version still needs that version AVAILABLE (load it
  first, then move the label); `--force_allow_any_version_labels_for_unavailable_models` allows any.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from components.common import storage
from serving import model_repository as repo
from serving.options import BatchingParameters, ServerOptions, read_session_config, saved_model_tags
from serving.servable import LoadedVersion, load_error, load_session, read_warmup_records
from serving.status import ServingStatus, failed_precondition, invalid_argument, not_found

log = logging.getLogger(__name__)


@dataclass
class VersionState:
    state: str  # START, LOADING, AVAILABLE, UNLOADING, END (ModelVersionStatus.State)
    error_code: str = "OK"
    error_message: str = ""
    attempts: int = 0
    retry_at: float = 0.0


@dataclass
class ServedModel:
    entry: repo.ModelEntry
    versions: dict[int, LoadedVersion] = field(default_factory=dict)  # replaced whole, never mutated
    states: dict[int, VersionState] = field(default_factory=dict)
    labels: dict[str, int] = field(default_factory=dict)


class NewModelsUnavailable(ServingStatus):
    """A reloaded config is applied, but a model it added has no version AVAILABLE: its load ended in an
    error (TF Serving's UNKNOWN from `ServerCore::WaitUntilModelsAvailable`). The model stays in the
    config and reports the error through GetModelStatus; a later identical config is not waited for."""


def _unavailable(failed: list[tuple[str, int, VersionState]]) -> str:
    """TF Serving's list of servables that did not become available: `{name: m version: v}` per servable,
    with " due to error: <status>" when it ended in one, each closed by "}, "."""
    return "".join(f"{{{{name: {name} version: {version}}}"
                   + (f" due to error: {state.error_code}: {state.error_message}" if state.error_message else "")
                   + "}, " for name, version, state in failed)


class ModelManager:
    """Keeps the served versions of every model in line with the repository and the config."""

    def __init__(self, entries: list[repo.ModelEntry], cache_dir: Path, options: ServerOptions,
                 batching: BatchingParameters | None = None,
                 on_event: Callable[[str, str, int, str], None] | None = None):
        self._cache_dir = cache_dir
        self._options = options
        self._batching = batching
        self._on_event = on_event or (lambda *a: None)
        self._models: dict[str, ServedModel] = {}
        self._refresh_lock = threading.Lock()
        self._config_lock = threading.Lock()
        self._closing = threading.Event()
        self._unloaders: list[threading.Thread] = []  # started unload threads
        self._unloads = threading.Condition()  # guards _unloads_pending: unloads begun, not finished
        self._unloads_pending = 0
        self.warmup_calls: dict[tuple[str, int], int] = {}
        self._session_config = read_session_config(options)
        self._tags = saved_model_tags(options)
        self.apply_config(entries)

    # ------------------------------------------------------------ config and polling
    def apply_config(self, entries: list[repo.ModelEntry], wait: bool = False,
                     cancelled: Callable[[], bool] = lambda: False) -> None:
        """Serve exactly these models: check labels, then load what is new, swap and unload.

        A label that TF Serving would refuse raises FAILED_PRECONDITION before anything loads, so a refused
        config changes nothing (`_check_labels`). With `wait` (a reload: gRPC or a
        changed config file), TF Serving's `ServerCore::AddModelsViaModelConfigList` for a config after
        the first: once applied, wait until every model *new to the config* has a version AVAILABLE or one
        that ended in an error after its retries (`_await_models`). Removed models are not waited for.
        Configs are applied one at a time (TF Serving's `config_mu_`); `cancelled` (the caller left, the
        server stops) ends a wait with CANCELLED, the config staying applied."""
        self._lock_config(cancelled)
        try:
            added = self._apply(entries)
            if wait and added:
                self._await_models(added, cancelled)
        finally:
            self._config_lock.release()

    def _lock_config(self, cancelled: Callable[[], bool]) -> None:
        while not self._config_lock.acquire(timeout=0.05):
            if cancelled() or self._closing.is_set():
                raise ServingStatus("CANCELLED", "config reload cancelled while an earlier reload was waiting")

    def _apply(self, entries: list[repo.ModelEntry]) -> list[str]:
        """Check labels, load, swap, unload removed models; returns the names new to the config."""
        with self._refresh_lock:
            labels = {entry.name: self._check_labels(entry) for entry in entries}
            new_models = {}
            for entry in entries:
                old = self._models.get(entry.name)
                same = old is not None and old.entry.base_path == entry.base_path
                new_models[entry.name] = ServedModel(entry, old.versions, old.states, old.labels) if same \
                    else ServedModel(entry)
            for name, served in new_models.items():
                served.labels = labels[name]
                self._swap_in(served, *self._load_new_versions(served))
            added = [name for name in new_models if name not in self._models]
            removed = [m for name, m in self._models.items() if name not in new_models]
            replaced = [m for name, m in self._models.items() if name in new_models and new_models[name].entry
                        .base_path != m.entry.base_path]
            self._models = new_models
            for served in removed:
                self._unload(list(served.versions.values()), served)
                log.info("model %s removed from the config", served.entry.name)
            for served in replaced:  # the versions read from the old base path
                self._unload(list(served.versions.values()))
            return added

    def _await_models(self, names: list[str], cancelled: Callable[[], bool]) -> None:
        """TF Serving's `WaitUntilModelsAvailable` (no timeout, as tensorflow_model_server sets it): wait
        until each model has a version AVAILABLE or END with an error, polling its folder every
        `file_system_poll_wait_seconds` and running its load retries when due (this may be the poll
        thread itself); then UNKNOWN "N model(s) did not become available: {{{name: m version: v} due
        to error: ...}, }" for those that failed, in TF Serving's words."""
        every = self._options.file_system_poll_wait_seconds
        next_poll = time.monotonic() + every
        while True:
            reached = {name: self._reached(name) for name in names}
            if all(r is not None for r in reached.values()):
                break
            if cancelled() or self._closing.is_set():
                raise ServingStatus("CANCELLED", f"stopped waiting for {', '.join(sorted(names))} to load")
            now = time.monotonic()
            retry_due = any(now >= state.retry_at for name in names for state in self._states(name)
                            if state.state == "LOADING" and state.error_message)
            if retry_due or (every > 0 and now >= next_poll):
                next_poll = now + every
                self.refresh()
            else:
                self._closing.wait(0.02)
        failed = [(name, *r) for name, r in sorted(reached.items()) if r is not None and r[1].state != "AVAILABLE"]
        if failed:
            raise NewModelsUnavailable("UNKNOWN", f"{len(failed)} model(s) did not become available: "
                                                  f"{{{_unavailable(failed)}}}")

    def _states(self, name: str) -> list[VersionState]:
        served = self._models.get(name)
        return list(served.states.values()) if served is not None else []

    def _reached(self, name: str) -> tuple[int, VersionState] | None:
        """The first version (in version order) that is AVAILABLE or ended in an error, as TF Serving's
        `ServableStateMonitor` answers a wait for `Latest(name)`; None while there is none."""
        served = self._models.get(name)
        if served is None:  # not in the config any more: nothing left to wait for
            return 0, VersionState("AVAILABLE")
        for version, state in sorted(served.states.items()):
            if state.state == "AVAILABLE" or (state.state == "END" and state.error_message):
                return version, state
        return None

    def _check_labels(self, entry: repo.ModelEntry) -> dict[str, int]:
        """TF Serving's `UpdateModelVersionLabelMap`, run before the config's models are added: each label
        must name a version of this model that is AVAILABLE *now* (whatever base path or policy served
        it), unless `force_allow_any_version_labels_for_unavailable_models`, or
        `allow_version_labels_for_unavailable_models` and the label is not in force on another version.
        Why it matters: a config that loads v2 and moves `stable` from v1 to v2 in one step is refused by
        TF Serving even with the flag, on every poll, so the new version never serves."""
        served = self._models.get(entry.name)
        in_force = served.labels if served is not None else {}
        states = served.states if served is not None else {}
        for label, version in entry.labels.items():
            if self._options.force_allow_any_version_labels_for_unavailable_models:
                continue
            allowed = (self._options.allow_version_labels_for_unavailable_models
                       and in_force.get(label, version) == version)
            available = version in states and states[version].state == "AVAILABLE"
            if not (allowed or available):
                raise failed_precondition(
                    f"Request to assign label to version {version} of model {entry.name}, which is not "
                    "currently available for inference")
        return dict(entry.labels)

    def refresh(self) -> None:
        """One poll: pick up new versions, retry failed loads that are due, drop unwanted versions."""
        with self._refresh_lock:
            for served in list(self._models.values()):
                try:
                    self._swap_in(served, *self._load_new_versions(served))
                except Exception:  # noqa: BLE001 - one model's trouble must not stop the others
                    log.exception("poll of model %s failed", served.entry.name)

    def await_initial_versions(self) -> None:
        """TF Serving's start-up (`ConnectSourcesWithFastInitialLoad`): wait while a version that failed
        to load has retries left (`load_retry_interval_micros` apart), then raise UNKNOWN naming every
        model that has no AVAILABLE version because one ended in an error, with the error, in TF Serving's
        words ("1 servable(s) did not become available: {{{name: m version: 2} due to error: ...}, }").

        A model without any version folder yet is not an error: TF Serving logs "No versions of servable
        ... found" and waits for one; here the poller picks it up once it appears."""
        while True:
            with self._refresh_lock:
                due = [state.retry_at for served in self._models.values() for state in served.states.values()
                       if state.state == "LOADING" and state.error_message]
            if not due:
                break
            time.sleep(max(0.0, min(due) - time.monotonic()))
            self.refresh()
        failed = [(served.entry.name, version, state) for served in self._models.values() if not served.versions
                  for version, state in sorted(served.states.items())
                  if state.state == "END" and state.error_message]
        if failed:
            raise ServingStatus("UNKNOWN", f"{len(failed)} servable(s) did not become available: "
                                           f"{{{_unavailable(failed)}}}")

    def _wanted(self, entry: repo.ModelEntry, present: list[int]) -> set[int]:
        if entry.version_policy == "all":
            chosen = present
        elif entry.version_policy == "specific":
            chosen = [v for v in present if v in set(entry.versions)]
        else:
            chosen = present[-max(1, entry.num_versions):]
        # The policy alone decides, as in TF Serving (the storage path source aspires the policy's versions;
        # labels only name versions): a label on a version the policy drops then answers NOT_FOUND. The
        # deploy step pins both versions with a `specific` policy while `stable` and `canary` differ.
        return set(chosen)

    def _load_new_versions(self, served: ServedModel) -> tuple[dict[int, LoadedVersion], set[int]]:
        """Load every wanted version not loaded yet. Returns (loaded incl. old, wanted)."""
        entry = served.entry
        versions = dict(served.versions)
        try:
            folders = repo.list_version_folders(entry.base_path)
        except Exception as exc:  # noqa: BLE001 - a flaky listing must not stop serving what is loaded
            log.warning("cannot list versions of %s at %s: %s", entry.name, entry.base_path, exc)
            return versions, set(versions)
        wanted = self._wanted(entry, sorted(folders))
        for version in sorted(wanted - set(versions)):
            lv = self._try_load(served, version, folders[version])
            if lv is not None:
                versions[version] = lv
        return versions, wanted

    def _try_load(self, served: ServedModel, version: int, folder: str) -> LoadedVersion | None:
        state = served.states.get(version)
        if state is not None and state.error_message:
            if state.state == "END" or time.monotonic() < state.retry_at:
                return None  # retries used up, or not due yet
        attempts = state.attempts + 1 if state else 1
        served.states[version] = VersionState("LOADING", attempts=attempts)
        name = served.entry.name
        try:
            lv = self._load(name, version, storage.join(served.entry.base_path, folder))
        except Exception as exc:  # noqa: BLE001 - reported through GetModelStatus, as TF Serving does
            retries_left = attempts <= self._options.max_num_load_retries
            log.error("failed to load %s version %d (attempt %d): %s", name, version, attempts, exc)
            served.states[version] = VersionState(
                "LOADING" if retries_left else "END", *load_error(exc), attempts,
                time.monotonic() + self._options.load_retry_interval_micros / 1e6)
            self._on_event(name, "load_failed", version, str(exc))
            return None
        served.states[version] = VersionState("AVAILABLE")
        self._on_event(name, "loaded", version, "")
        log.info("loaded %s version %d from %s", name, version, folder)
        return lv

    def _load(self, name: str, version: int, uri: str) -> LoadedVersion:
        from serving import inference

        local = repo.download_version(uri, self._cache_dir)
        session, meta_graph = load_session(local, self._session_config, self._tags)
        lv = LoadedVersion(name, version, local, session, meta_graph, self._batching,
                           on_batch=lambda model, rows: self._on_event(model, "batch", rows, ""))
        if self._options.enable_model_warmup:
            try:
                records = read_warmup_records(local)
                calls = inference.replay_warmup(lv, records, self._options.num_request_iterations_for_warmup,
                                                self._options.max_request_tensor_bytes,
                                                self._options.enable_signature_method_name_check)
            except BaseException:
                lv.close()
                raise
            self.warmup_calls[(name, version)] = calls
            if calls:
                log.info("%s version %d: replayed %d warmup requests", name, version, calls)
        return lv

    def _swap_in(self, served: ServedModel, versions: dict[int, LoadedVersion], wanted: set[int]) -> None:
        """One assignment publishes the new table; versions no longer wanted are unloaded after it.

        TF Serving's availability-preserving policy: while no wanted version is loaded (the new one is
        still failing), the newest version that was serving stays loaded."""
        unwanted = sorted(v for v in versions if v not in wanted)
        if wanted and unwanted and not any(v in wanted for v in versions):
            unwanted = unwanted[:-1]
        self._reserve_unloads(len(unwanted))  # before the new table shows: whoever sees it can wait for these
        served.versions = {v: lv for v, lv in versions.items() if v not in unwanted}
        self._unload([versions[v] for v in unwanted], served, reserved=True)

    def _reserve_unloads(self, count: int) -> None:
        with self._unloads:
            self._unloads_pending += count

    def _unload(self, versions: list[LoadedVersion], served: ServedModel | None = None,
                reserved: bool = False) -> None:
        """Close each version on its own thread (UNLOADING -> END); `reserved`: `_reserve_unloads` already
        counted them, so `wait_unloaded` waits for them too."""
        if not reserved:
            self._reserve_unloads(len(versions))
        for lv in versions:
            if served is not None:
                served.states[lv.version] = VersionState("UNLOADING")
            thread = threading.Thread(target=self._finish_unload, args=(lv, served), daemon=True,
                                      name=f"retina-unload-{lv.name}-{lv.version}")
            thread.start()
            with self._unloads:
                self._unloaders = [t for t in self._unloaders if t.is_alive()] + [thread]

    def _finish_unload(self, lv: LoadedVersion, served: ServedModel | None) -> None:
        try:
            lv.close()
            if storage.is_s3(str(lv.path)) or str(lv.path).startswith(str(self._cache_dir)):
                shutil.rmtree(lv.path, ignore_errors=True)
            if served is not None and served.states.get(lv.version, VersionState("")).state == "UNLOADING":
                served.states[lv.version] = VersionState("END")
            self._on_event(lv.name, "unloaded", lv.version, "")
            log.info("unloaded %s version %d", lv.name, lv.version)
        finally:
            with self._unloads:
                self._unloads_pending -= 1
                self._unloads.notify_all()

    def wait_unloaded(self, timeout_s: float = 30.0) -> None:
        """Wait until every unload begun so far has finished, including one whose version was swapped out
        of the table a moment ago on another thread (it is counted before the new table shows)."""
        deadline = time.monotonic() + timeout_s
        with self._unloads:
            self._unloads.wait_for(lambda: self._unloads_pending == 0, timeout=timeout_s)
            started = list(self._unloaders)
        for thread in started:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))

    # ------------------------------------------------------------ lookups
    def entries(self) -> list[repo.ModelEntry]:
        return [m.entry for m in self._models.values()]

    def model(self, name: str) -> ServedModel | None:
        return self._models.get(name)

    def resolve(self, model_spec: Any) -> LoadedVersion:
        """ModelSpec (name + version or label) -> the loaded version, with TF Serving's codes and words."""
        name = model_spec.name
        if not name:
            raise invalid_argument("ModelSpec has no name specified.")
        served = self._models.get(name)
        choice = model_spec.WhichOneof("version_choice")
        if choice == "version_label":
            labels = served.labels if served is not None else {}
            if model_spec.version_label not in labels:
                raise invalid_argument(f"Unrecognized servable version label: {model_spec.version_label}")
            version: int | None = labels[model_spec.version_label]
        elif choice == "version":
            version = int(model_spec.version.value)
        else:
            version = None
        request = f"Latest({name})" if version is None else f"Specific({name}, {version})"
        versions = served.versions if served is not None else {}  # one read: the snapshot this request keeps
        lv = versions.get(version) if version is not None else (versions[max(versions)] if versions else None)
        if lv is None:
            raise not_found(f"Servable not found for request: {request}")
        return lv

    def status(self, model_spec: Any) -> list[tuple[int, VersionState]]:
        """(version, state) pairs as GetModelStatus reports them (a label is not used, as in TF Serving)."""
        name = model_spec.name
        served = self._models.get(name)
        states = dict(served.states) if served is not None else {}
        if model_spec.WhichOneof("version_choice") == "version":
            version = int(model_spec.version.value)
            if version not in states:
                raise not_found(f"Could not find version {version} of model {name}")
            return [(version, states[version])]
        if not states:
            raise not_found(f"Could not find any versions of model {name}")
        return sorted(states.items())

    def close(self) -> None:
        self._closing.set()
        with self._refresh_lock:
            for served in self._models.values():
                self._unload(list(served.versions.values()), served)
                served.versions = {}
            self._models = {}
        self.wait_unloaded()
