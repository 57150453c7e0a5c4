"""Sim: discrete-event simulation of vLLM V1 serving: workloads (`workload`; lengths read
from ShareGPT and CSV traces by `trace_files`), the scheduler, the event loop, metrics and
reports; for `dooly search`, SLOs and goodput by bisection
(`slo`, `watch`, `goodput`), candidates and their `vllm serve` flags (`candidates`), step
times drawn within stated errors (`intervals`, `steps`) and the search's reports.
`simulate(requests, step_time_fn, SchedulerConfig())` is the entry; latencies come from
any `step_ms(batch)` (a `dooly.predict.Predictor`). May
import: numpy, matplotlib and rich (reports), dooly.errors; nothing else of Dooly (it
takes the step model as a function)."""
from dooly.sim.metrics import RequestMetrics, Summary, request_metrics, summarize
from dooly.sim.scheduler import ScheduledSeq, Scheduler, SchedulerConfig
from dooly.sim.simulator import RequestRecord, SimResult, simulate
from dooly.sim.trace_files import load_sharegpt, load_trace_csv
from dooly.sim.workload import LengthDist, Request, WorkloadSpec, arrival_times, build_workload

__all__ = ["LengthDist", "Request", "RequestMetrics", "RequestRecord",
           "ScheduledSeq", "Scheduler", "SchedulerConfig", "SimResult", "Summary",
           "WorkloadSpec", "arrival_times", "build_workload", "load_sharegpt",
           "load_trace_csv", "request_metrics", "simulate", "summarize"]
