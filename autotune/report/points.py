"""A measured point in perf_analyzer's words, as ``measure`` prints it."""

from __future__ import annotations

from autotune.load.windows import Measurement


def perf_line(measured: Measurement) -> str:
    """One point in perf_analyzer's words, with errors and instability said where there were any; an open loop's
    with how late its requests left, and who fell behind where one did."""
    load = (f"Request Rate: {measured.offered_rate:g}" if measured.open_loop
            else f"Concurrency: {measured.concurrency}")
    line = f"{load}, throughput: {measured.throughput:.1f} infer/sec, latency p95 {measured.p95_ms * 1e3:.0f} usec"
    notes = []
    if measured.open_loop:
        line += (f" ({measured.sent_p95_ms * 1e3:.0f} from each send), sent p50 {measured.send_lag_p50_ms:.2f} ms / "
                 f"p99 {measured.send_lag_p99_ms:.2f} ms late")
        if measured.cap_waits:
            line += f", {measured.cap_waits} waited for the cap on requests in flight"
        if measured.fell_behind:
            notes.append(f"{measured.fell_behind} fell behind the schedule")
    if measured.errors:
        line += f", {measured.errors} errors ({measured.first_error})"
    if not measured.stable and not measured.errors:
        notes.append(f"not stable after {measured.windows} windows")
    return f"{line} ({'; '.join(notes)})" if notes else line
