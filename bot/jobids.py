"""Every job's name and id, in one place: the web process enqueues, the workers run, the
reconciler enqueues again with the same ids (arq never doubles a job whose id it holds)."""

from __future__ import annotations

PROCESS_DELIVERY = "process_delivery"
EXECUTE_RUN = "execute_run"
API_COMMAND = "api_command"
SEND_NOTIFICATIONS = "send_notifications"


def delivery_job_id(delivery_id: str) -> str:
    return f"d:{delivery_id}"


def run_job_id(run_id: str) -> str:
    return f"run:{run_id}"


def interrupted_job_id(run_id: str) -> str:
    """The job that ends a run whose worker died. Not ``run:<id>``: a worker killed mid-job
    leaves that job marked in progress in Redis until arq's job timeout (hours)."""
    return f"interrupted:{run_id}"


def command_job_id(command_id: str) -> str:
    return f"cmd:{command_id}"
