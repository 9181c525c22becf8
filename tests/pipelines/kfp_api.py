"""A small in-memory Kubeflow Pipelines API (REST v2beta1) on 127.0.0.1, for the client tests.

A real KFP API server needs a Kubernetes cluster, MySQL and Argo, none of which run here. This server
answers the endpoints `kfp.Client` calls for upload / new version / run / recurring run exactly as the
v2beta1 REST API does (paths, query parameters, multipart `uploadfile`, JSON bodies), so the real
`kfp.Client` and its generated `kfp_server_api` code are exercised end to end, and what reached the
"server" (the uploaded YAML, the run's parameters, the cron trigger) can be checked. It refuses what the
real server refuses where that matters here: a duplicate pipeline name, an upload that is not a pipeline
spec, a version for an unknown pipeline.
"""

from __future__ import annotations

import email.parser
import email.policy
import itertools
import json
import threading
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

import yaml

PREFIX = "/apis/v2beta1"


@dataclass
class KfpState:
    pipelines: dict[str, dict[str, Any]] = field(default_factory=dict)
    versions: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # pipeline id -> versions, oldest first
    experiments: dict[str, dict[str, Any]] = field(default_factory=dict)
    runs: list[dict[str, Any]] = field(default_factory=list)
    recurring_runs: list[dict[str, Any]] = field(default_factory=list)
    uploads: list[dict[str, Any]] = field(default_factory=list)  # every uploaded package, parsed
    ids: Any = field(default_factory=lambda: itertools.count(1))
    clock: Any = field(default_factory=lambda: itertools.count(1))

    def new_id(self, kind: str) -> str:
        return f"{kind}-{next(self.ids)}"

    def timestamp(self) -> str:  # strictly increasing, so "created_at desc" has one answer
        return f"2026-11-23T00:00:{next(self.clock):02d}Z"


class ApiError(Exception):
    def __init__(self, status: HTTPStatus, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def _display_name_filter(query: dict[str, list[str]]) -> str | None:
    raw = query.get("filter", [""])[0]
    if not raw:
        return None
    predicates = json.loads(raw).get("predicates", [])
    for p in predicates:
        if p.get("key") == "display_name":
            return p.get("stringValue", p.get("string_value"))
    return None


def _uploaded_spec(handler: BaseHTTPRequestHandler, body: bytes) -> tuple[str, dict[str, Any]]:
    """The multipart `uploadfile` part -> (file name, the pipeline spec as a dict)."""
    header = f"Content-Type: {handler.headers['Content-Type']}\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(header + body)
    for part in message.iter_parts():
        if part.get_param("name", header="content-disposition") == "uploadfile":
            text = part.get_payload(decode=True).decode("utf-8")
            docs = [d for d in yaml.safe_load_all(text) if d]
            if not docs or "pipelineInfo" not in docs[0] or "root" not in docs[0]:
                raise ApiError(HTTPStatus.BAD_REQUEST, "uploaded file is not a KFP pipeline spec")
            return part.get_filename() or "", docs[0]
    raise ApiError(HTTPStatus.BAD_REQUEST, "multipart body has no uploadfile")


def make_handler(state: KfpState, lock: threading.Lock) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:  # keep pytest output clean
            pass

        def _reply(self, status: HTTPStatus, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _handle(self, method: str) -> None:
            url = urlparse(self.path)
            query = parse_qs(url.query)
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            try:
                with lock:
                    payload = route(method, url.path.removeprefix(PREFIX), query, body, self)
                self._reply(HTTPStatus.OK, payload)
            except ApiError as exc:
                self._reply(exc.status, {"error_message": exc.message, "code": int(exc.status)})

        def do_GET(self) -> None:  # noqa: N802 - http.server's method names
            self._handle("GET")

        def do_POST(self) -> None:  # noqa: N802
            self._handle("POST")

    def route(method: str, path: str, query: dict[str, list[str]], body: bytes,
              handler: BaseHTTPRequestHandler) -> dict[str, Any]:
        parts = [p for p in path.split("/") if p]
        if method == "GET" and parts == ["healthz"]:
            return {"multi_user": False, "pipeline_store_driver_type": "database"}
        if method == "GET" and parts == ["experiments"]:
            name = _display_name_filter(query)
            return {"experiments": [e for e in state.experiments.values() if name in (None, e["display_name"])]}
        if method == "POST" and parts == ["experiments"]:
            experiment = json.loads(body)
            experiment["experiment_id"] = state.new_id("experiment")
            state.experiments[experiment["experiment_id"]] = experiment
            return experiment
        if method == "GET" and parts == ["pipelines"]:
            name = _display_name_filter(query)
            return {"pipelines": [p for p in state.pipelines.values() if name in (None, p["display_name"])]}
        if method == "POST" and parts == ["pipelines", "upload"]:
            name = query.get("name", [""])[0]
            filename, spec = _uploaded_spec(handler, body)
            if any(p["display_name"] == name for p in state.pipelines.values()):
                raise ApiError(HTTPStatus.CONFLICT, f"pipeline {name!r} already exists")
            pipeline_id = state.new_id("pipeline")
            pipeline = {"pipeline_id": pipeline_id, "display_name": name, "created_at": state.timestamp(),
                        "description": query.get("description", [""])[0]}
            state.pipelines[pipeline_id] = pipeline
            state.versions[pipeline_id] = [{"pipeline_id": pipeline_id, "pipeline_version_id": state.new_id("version"),
                                            "display_name": name, "created_at": pipeline["created_at"]}]
            state.uploads.append({"kind": "pipeline", "name": name, "filename": filename, "spec": spec})
            return pipeline
        if method == "POST" and parts == ["pipelines", "upload_version"]:
            pipeline_id = query.get("pipelineid", [""])[0]
            if pipeline_id not in state.pipelines:
                raise ApiError(HTTPStatus.NOT_FOUND, f"pipeline {pipeline_id!r} not found")
            filename, spec = _uploaded_spec(handler, body)
            version = {"pipeline_id": pipeline_id, "pipeline_version_id": state.new_id("version"),
                       "display_name": query.get("name", [""])[0], "created_at": state.timestamp(),
                       "description": query.get("description", [""])[0]}
            state.versions[pipeline_id].append(version)
            state.uploads.append({"kind": "version", "name": version["display_name"], "filename": filename,
                                  "spec": spec})
            return version
        if method == "GET" and len(parts) == 3 and parts[0] == "pipelines" and parts[2] == "versions":
            versions = list(state.versions.get(parts[1], []))
            if query.get("sort_by", [""])[0].replace("%20", " ") == "created_at desc":
                versions.sort(key=lambda v: v["created_at"], reverse=True)
            size = int(query.get("page_size", ["0"])[0] or 0)
            return {"pipeline_versions": versions[:size] if size else versions, "total_size": len(versions)}
        if method == "POST" and parts == ["runs"]:
            run = json.loads(body)
            if run.get("experiment_id") not in state.experiments:
                raise ApiError(HTTPStatus.NOT_FOUND, "experiment not found")
            run["run_id"] = state.new_id("run")
            run["state"] = "PENDING"
            state.runs.append(run)
            return run
        if method == "POST" and parts == ["recurringruns"]:
            job = json.loads(body)
            if job.get("experiment_id") not in state.experiments:
                raise ApiError(HTTPStatus.NOT_FOUND, "experiment not found")
            job["recurring_run_id"] = state.new_id("recurring")
            job["status"] = "ENABLED" if job.get("mode") == "ENABLE" else "DISABLED"
            state.recurring_runs.append(job)
            return job
        raise ApiError(HTTPStatus.NOT_FOUND, f"no route {method} {path}")

    return Handler


class KfpApiServer:
    """`with KfpApiServer() as api: kfp.Client(host=api.url)`; `api.state` holds what was received."""

    def __init__(self) -> None:
        self.state = KfpState()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(self.state, self._lock))
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True, name="kfp-api")

    def __enter__(self) -> KfpApiServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
