"""Prometheus metrics: every series of the contract in SERVING.md, defined here only.

Names use vLLM's style under the `latentserve:` prefix. The engine reports finished
requests as plain `RequestStats` records and `Metrics.record_request` turns them into
observations; gauges are read from the engine when Prometheus scrapes. Each app gets its
own registry, so tests never see another app's numbers.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from latent_ops.choices import METHODS  # "none" = plain generation

# Explicit buckets sized to each range: plain requests take ms to minutes on a CPU,
# refinement seconds to many minutes, a latent update microseconds to seconds.
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
REFINE_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1200)
STEP_BUCKETS = (0, 1, 2, 3, 4, 5, 6, 8, 10, 15, 20, 30, 50, 100)
GAIN_BUCKETS = (-1, -0.5, -0.25, -0.1, 0, 0.1, 0.25, 0.5, 0.75, 1)
UPDATE_BUCKETS = (1e-5, 5e-5, 1e-4, 5e-4, 1e-3, 5e-3, 0.01, 0.05, 0.1, 0.5, 1, 5)
ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)
NORM_BUCKETS = (0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)
COSINE_BUCKETS = (-0.5, 0, 0.5, 0.8, 0.9, 0.95, 0.99, 0.999, 1)
DISTANCE_BUCKETS = (0, 0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5)

P = "latentserve:"


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        r = self.registry = registry or CollectorRegistry()
        self.request_success = Counter(
            P + "request_success", "Finished requests", ["finished_reason"], registry=r
        )
        self.request_failure = Counter(
            P + "request_failure", "Requests that failed", ["reason"], registry=r
        )
        self.prompt_tokens = Counter(P + "prompt_tokens", "Prompt tokens processed", registry=r)
        self.generation_tokens = Counter(
            P + "generation_tokens", "Tokens generated for answers", registry=r
        )
        self.refinement_tokens = Counter(
            P + "refinement_tokens", "Tokens generated while refining", ["method"], registry=r
        )
        self.refinement_stop = Counter(
            P + "refinement_stop", "Refinements ended, by reason", ["method", "reason"], registry=r
        )
        self.refinement_budget_cuts = Counter(
            P + "refinement_budget_cuts",
            "Refinements granted less than they asked (--refinement-policy adaptive), by reason",
            ["method", "reason"],
            registry=r,
        )
        self.admission_rejections = Counter(
            P + "admission_rejections", "Requests rejected at admission", ["reason"], registry=r
        )
        self.requests_cancelled = Counter(
            P + "requests_cancelled", "Requests whose client went away", registry=r
        )
        self.num_requests_running = Gauge(
            P + "num_requests_running", "Requests being served", registry=r
        )
        self.num_requests_waiting = Gauge(
            P + "num_requests_waiting", "Requests waiting for a batch slot", registry=r
        )
        self.device_memory_used_bytes = Gauge(
            P + "device_memory_used_bytes", "Memory held by the model's device", registry=r
        )
        self.e2e_request_latency = Histogram(
            P + "e2e_request_latency_seconds",
            "Arrival to last byte",
            ["method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.time_to_first_token = Histogram(
            P + "time_to_first_token_seconds",
            "Arrival to first generated token",
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.request_queue_time = Histogram(
            P + "request_queue_time_seconds",
            "Arrival to first batch slot",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.refinement_duration = Histogram(
            P + "refinement_duration_seconds",
            "Time spent refining",
            ["method"],
            buckets=REFINE_BUCKETS,
            registry=r,
        )
        self.refinement_phase = Histogram(
            P + "refinement_phase_seconds",
            "Wall time of refined requests per phase (usage.refinement.time_ms)",
            ["method", "phase"],
            buckets=REFINE_BUCKETS,
            registry=r,
        )
        self.refinement_forward_passes = Histogram(
            P + "refinement_forward_passes",
            "Runner steps a refined request's sequences took part in",
            ["method"],
            buckets=(1, 8, 32, 64, 128, 256, 512, 1024, 2048, 4096),
            registry=r,
        )
        self.refinement_steps = Histogram(
            P + "refinement_steps",
            "Refinement iterations per request",
            ["method"],
            buckets=STEP_BUCKETS,
            registry=r,
        )
        self.reward_gain = Histogram(
            P + "reward_gain",
            "Final minus initial reward",
            ["method"],
            buckets=GAIN_BUCKETS,
            registry=r,
        )
        self.latent_norm = Histogram(
            P + "latent_norm",
            "Mean L2 norm of a refined request's final latents",
            ["method"],
            buckets=NORM_BUCKETS,
            registry=r,
        )
        self.latent_cosine_drift = Histogram(
            P + "latent_cosine_drift",
            "Cosine similarity of latents with the previous iteration's, per iteration",
            ["method"],
            buckets=COSINE_BUCKETS,
            registry=r,
        )
        self.latent_distance = Histogram(
            P + "latent_distance",
            "Relative distance of the final latents from the first, per request",
            ["method"],
            buckets=DISTANCE_BUCKETS,
            registry=r,
        )
        self.latent_update = Histogram(
            P + "latent_update_seconds",
            "One batched latent update",
            buckets=UPDATE_BUCKETS,
            registry=r,
        )
        self.latent_update_batch_rows = Histogram(
            P + "latent_update_batch_rows",
            "Latent rows per batched update",
            buckets=ROW_BUCKETS,
            registry=r,
        )

        # Known label values start at zero, so dashboards and alerts see the series (and a
        # rate of 0) before the first event of each kind, as vLLM does.
        for reason in ("stop", "length", "abort", "deadline"):
            self.request_success.labels(finished_reason=reason)
        self.request_failure.labels(reason="error")
        self.admission_rejections.labels(reason="queue_full")
        for method in METHODS:
            self.e2e_request_latency.labels(method=method)
        for method in METHODS[1:]:
            self.refinement_budget_cuts.labels(method=method, reason="load")
            for child in (
                self.refinement_tokens,
                self.refinement_duration,
                self.refinement_steps,
                self.reward_gain,
                self.latent_norm,
                self.latent_cosine_drift,
                self.latent_distance,
            ):
                child.labels(method=method)

    def bind_engine(self, engine, device_memory) -> None:
        """Gauges read live values at scrape time."""
        self.num_requests_running.set_function(lambda: engine.num_running)
        self.num_requests_waiting.set_function(lambda: engine.num_waiting)
        self.device_memory_used_bytes.set_function(device_memory)

    def record_request(self, stats) -> None:
        """Turn one finished request's `RequestStats` into observations."""
        self.prompt_tokens.inc(stats.prompt_tokens)
        self.generation_tokens.inc(stats.completion_tokens)
        if stats.outcome == "cancelled":
            self.requests_cancelled.inc()
        elif stats.outcome == "error":
            self.request_failure.labels(reason="error").inc()
        else:
            self.request_success.labels(finished_reason=stats.outcome).inc()
        if stats.finished is not None:
            self.e2e_request_latency.labels(method=stats.method).observe(
                stats.finished - stats.arrival
            )
        if stats.first_token is not None:
            self.time_to_first_token.observe(stats.first_token - stats.arrival)
        if stats.scheduled is not None:
            self.request_queue_time.observe(stats.scheduled - stats.arrival)
        info = stats.refinement
        if info is not None:
            method = info["method"]
            self.refinement_tokens.labels(method=method).inc(stats.refinement_tokens)
            self.refinement_stop.labels(method=method, reason=info["stopped_reason"]).inc()
            for phase, seconds in stats.phase_seconds().items():
                self.refinement_phase.labels(method=method, phase=phase).observe(seconds)
            self.refinement_forward_passes.labels(method=method).observe(stats.forward_passes)
            cut = (info.get("budget") or {}).get("cut_reason")
            if cut is not None:
                self.refinement_budget_cuts.labels(method=method, reason=cut).inc()
            self.refinement_duration.labels(method=method).observe(
                info["refinement_time_ms"] / 1000
            )
            self.refinement_steps.labels(method=method).observe(info["steps"])
            if info["initial_reward"] is not None and info["final_reward"] is not None:
                self.reward_gain.labels(method=method).observe(
                    info["final_reward"] - info["initial_reward"]
                )
            trace = stats.trace
            if trace is not None and trace.norms:
                self.latent_norm.labels(method=method).observe(trace.norms[-1])
                self.latent_distance.labels(method=method).observe(trace.distance[-1])
                for value in trace.cosine_drift:
                    self.latent_cosine_drift.labels(method=method).observe(value)

    def record_latent_update(self, seconds: float, rows: int) -> None:
        self.latent_update.observe(seconds)
        self.latent_update_batch_rows.observe(rows)

    def render(self) -> bytes:
        return generate_latest(self.registry)
