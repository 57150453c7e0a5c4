"""Discrete-event simulation of vLLM V1 serving: workloads, the scheduler, the event loop,
metrics and reports. `simulate(requests, step_time_fn, SchedulerConfig())` is the entry."""
from dooly.sim.metrics import RequestMetrics, Summary, request_metrics, summarize
from dooly.sim.scheduler import ScheduledSeq, Scheduler, SchedulerConfig
from dooly.sim.simulator import LinearOverhead, RequestRecord, SimResult, simulate
from dooly.sim.workload import (LengthDist, Request, WorkloadSpec, arrival_times,
                                build_workload, load_sharegpt, load_trace_csv)

__all__ = ["LengthDist", "LinearOverhead", "Request", "RequestMetrics", "RequestRecord",
           "ScheduledSeq", "Scheduler", "SchedulerConfig", "SimResult", "Summary",
           "WorkloadSpec", "arrival_times", "build_workload", "load_sharegpt",
           "load_trace_csv", "request_metrics", "simulate", "summarize"]
