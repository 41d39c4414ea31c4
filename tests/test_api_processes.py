"""Web and worker as separate processes that share nothing but the database and Redis (issue
13): with the database artifact store, the web process serves the diff and the manifest of a
run the worker produced in another working directory, over the REST API with a token."""

from __future__ import annotations

import json
import os
import subprocess

import httpx
import pytest

from tests.lifecycle_stack import BosunProcess, process_stack, settings_env
from tests.services import docker_client, missing
from tests.stack import AGENT_IMAGE, StackPlace, free_port, make_stack_settings

pytestmark = pytest.mark.docker


def test_the_web_process_serves_artifacts_a_worker_elsewhere_produced(place: StackPlace) -> None:
    client = docker_client()
    try:
        client.images.get(AGENT_IMAGE)
    except Exception as exc:  # noqa: BLE001
        missing(AGENT_IMAGE, str(exc))
    finally:
        client.close()
    port = free_port()
    place.world.emulator.create_app(f"http://127.0.0.1:{port}/webhooks/github", "webhook-secret")
    shared = {"artifacts": {"backend": "database"}}
    (place.tmp_path / "web").mkdir()
    web_settings = make_stack_settings(
        place.tmp_path / "web",
        place.world,
        place.redis_url,
        place.namespace,
        place.work_root,
        port,
        **shared,
    )
    worker_dir = place.tmp_path / "worker"
    worker_settings = make_stack_settings(
        worker_dir, place.world, place.redis_url, place.namespace, place.work_root, port,
        database={"url": web_settings.database.url}, **shared,
    )  # fmt: skip
    assert web_settings.data_dir != worker_settings.data_dir
    with process_stack(web_settings, place.world, port, place.tmp_path / "logs") as stack:
        env = {**stack.env, **settings_env(worker_settings)}
        worker_dir.mkdir(parents=True, exist_ok=True)
        token = subprocess.run(
            [str(stack.web.argv[0]), "token", "create", "--name", "ops", "--scope", "read",
             "--format", "json"],
            env=stack.env, capture_output=True, text=True, check=True, timeout=60,
        )  # fmt: skip
        secret = json.loads(token.stdout)["token"]
        worker = BosunProcess(
            "worker", [stack.web.argv[0], "worker"], env, place.tmp_path / "w.log"
        )
        with worker.log.open("ab") as log:  # a working directory of its own
            worker.proc = subprocess.Popen(
                worker.argv, env=env, cwd=worker_dir, stdout=log, stderr=subprocess.STDOUT
            )
        stack.workers.append(worker)
        number = place.world.emulator.create_issue(stack.repo, "Edit", "Edit the README.", "alice")
        place.world.emulator.add_labels(stack.repo, number, ["bosun"], "alice")
        stack.wait_for(
            lambda: (run := stack.run()) is not None and run["state"] == "review_ready",
            120,
            "a review-ready run",
        )
        run = stack.run()
        assert run is not None
        api = httpx.Client(
            base_url=f"http://127.0.0.1:{port}/api/v1",
            headers={"Authorization": f"Bearer {secret}"},
            timeout=10,
        )
        with api:
            diff = api.get(f"/runs/{run['id']}/diff").json()
            assert {f["path"] for f in diff["files"]} >= {"README.md", "src/feature.py"}
            assert "+Edited by the agent." in diff["unified"]
            manifest = api.get(f"/runs/{run['id']}/artifacts/manifest.json")
            assert manifest.status_code == 200
            assert manifest.headers["content-type"].startswith("application/json")
            assert json.loads(manifest.content)["run_id"] == run["id"]
            listed = {a["name"]: a for a in api.get(f"/runs/{run['id']}/artifacts").json()}
            assert listed["diff"]["storage"] == "database"
        # Nothing of the run was written under the web process's data directory.
        web_files = [p for p in web_settings.data_dir.rglob("*") if p.is_file()]
        assert not [p for p in web_files if run["id"] in str(p)], web_files
        assert os.path.isdir(worker_dir)
