"""Prometheus metrics for an apccache segment (needs ``prometheus_client``:
``pip install 'apccache[metrics]'``).

An application that already serves metrics registers a collector; every
scrape then reads the segment the way ``apcstat`` does, without disturbing
it (no hit, miss or access time is counted, nothing is written)::

    from prometheus_client import REGISTRY
    from apccache.metrics import ApcCollector

    REGISTRY.register(ApcCollector(cache))

``apcstat NAME --prometheus`` prints the same metrics as exposition text,
for node_exporter's textfile collector.  Every metric carries a ``segment``
label; the cache's own numbers also carry ``table`` ("user" for the user
cache, "files" for the file and opcode cache).  Counters are exported as
``_total``; they go back to zero when the cache is cleared (Prometheus
treats that as a counter reset).
"""
try:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError("apccache.metrics needs prometheus_client: pip install 'apccache[metrics]'") from e

__all__ = ["ApcCollector", "families", "exposition"]


class ApcCollector:
    """A ``prometheus_client`` collector for one segment.

    ``cache`` is an attached ``apccache.Cache``.  With ``detail=True`` each
    scrape also builds the chain-length and free-block histograms, which
    copies the entry records out under the locks once (a pass over the
    slot table); by default a scrape reads only lock-free counters and the
    allocator totals.
    """

    def __init__(self, cache, *, detail=False):
        self.cache = cache
        self.detail = detail

    def collect(self):
        from .stat.collect import collect

        return families(collect(self.cache, detail=self.detail))

    def describe(self):
        # Registering should not read the segment: the names are static.
        return []


def _table_metrics(add, seg, table, t):
    lab = {"segment": seg, "table": table}
    add("counter", "apccache_hits", "Lookups that found a live entry.", t["hits"], lab)
    add("counter", "apccache_misses", "Lookups that found no live entry.", t["misses"], lab)
    add("counter", "apccache_inserts", "Entries stored.", t["inserts"], lab)
    add("counter", "apccache_expunges", "Times the cache had to make room for an insert.", t["expunges"], lab)
    add("counter", "apccache_evictions", "Live entries removed to make room.", t["evictions"], lab)
    add("counter", "apccache_expired", "Expired entries removed.", t["expired"], lab)
    add("gauge", "apccache_entries", "Entries in the cache.", t["entries"], lab)
    add("gauge", "apccache_entry_memory_bytes", "Bytes of arena held by the entries.", t["memory"], lab)
    add("gauge", "apccache_slots", "Hash buckets of the slot table.", t["slots"]["count"], lab)
    add("gauge", "apccache_start_time_seconds", "When the counters started (creation or last clear), "
        "seconds since the epoch.", t["start_time"], lab)
    if "longest_chain" in t["slots"]:
        add("gauge", "apccache_chain_length_max", "The longest chain of any bucket.", t["slots"]["longest_chain"], lab)


def families(st):
    """The metric families of one ``apccache.stat.collect()`` dict."""
    made = {}
    order = []

    def add(kind, name, doc, value, labels, unit=""):
        fam = made.get(name)
        if fam is None:
            cls = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
            fam = made[name] = cls(name, doc, labels=list(labels), unit=unit)
            order.append(fam)
        if value is not None:
            fam.add_metric([str(v) for v in labels.values()], value)

    seg = st["segment"]["name"]
    s = {"segment": seg}
    u, a = st["user"], st["allocator"]
    add("gauge", "apccache_info", "Always 1; the labels say which layout version the segment has.", 1,
        {"segment": seg, "layout_version": str(st["segment"]["layout_version"])})
    add("gauge", "apccache_segment_bytes", "Size of the shared-memory segment.", st["segment"]["size"], s)
    add("gauge", "apccache_segment_created_timestamp_seconds", "When the segment was created.",
        st["segment"]["created"], s)
    table_u = dict(u, slots=st["slots"])
    _table_metrics(add, seg, "user", table_u)
    if st["files"] is not None:
        _table_metrics(add, seg, "files", st["files"])
    add("gauge", "apccache_memory_used_bytes", "Bytes of the arena in use (every table and the GC list).",
        a["used"], s)
    add("gauge", "apccache_memory_free_bytes", "Free bytes of the arena.", a["free"], s)
    add("gauge", "apccache_memory_limit_bytes", "Size of the arena: the most the entries can use.",
        a["arena_size"], s)
    add("gauge", "apccache_largest_free_block_bytes", "The largest free block: the largest entry that fits "
        "without compaction.", a["largest_free"], s)
    add("gauge", "apccache_free_blocks", "Free blocks in the arena.", a["free_blocks"], s)
    add("gauge", "apccache_gc_entries", "Deleted entries still held by a reader (the GC list).",
        u["gc"]["entries"], s)
    add("gauge", "apccache_gc_memory_bytes", "Bytes held by the GC list.", u["gc"]["memory"], s)
    add("counter", "apccache_repairs", "Repairs after a process died holding a lock.", a["repairs"], s)
    add("counter", "apccache_compactions", "Arena compactions.", a["compactions"], s)

    hists = []
    if "chain_lengths" in st["slots"]:
        buckets, acc, total = [], 0, 0
        for h in st["slots"]["chain_lengths"]:
            acc += h["slots"]
            total += h["length"] * h["slots"]
            buckets.append((str(float(h["length"])), acc))
        buckets.append(("+Inf", acc))
        fam = HistogramMetricFamily("apccache_chain_length", "Buckets of the user cache by chain length.",
                                    labels=["segment"])
        fam.add_metric([seg], _dedupe(buckets), total)
        hists.append(fam)
    if "free_block_sizes" in a:
        buckets, acc, total = [], 0, 0
        for h in a["free_block_sizes"]:
            acc += h["blocks"]
            total += h["bytes"]
            buckets.append((str(float(h["max"] + 1)), acc))
        buckets.append(("+Inf", acc))
        fam = HistogramMetricFamily("apccache_free_block_bytes", "Free blocks of the arena by size "
                                    "(powers of two).", labels=["segment"])
        fam.add_metric([seg], _dedupe(buckets), total)
        hists.append(fam)

    sv = st["supervisor"]
    if sv is not None and "error" not in sv:
        add("gauge", "apccache_supervisor_up", "1 while the supervisor's master process is running.",
            1 if sv["master_alive"] else 0, s)
        add("gauge", "apccache_supervisor_generation", "The generation the supervisor serves.", sv["generation"], s)
        add("gauge", "apccache_supervisor_heartbeat_timestamp_seconds", "The master's last loop pass.",
            sv["heartbeat"], s)
        for p in sv["pools"]:
            pl = {"segment": seg, "pool": p["name"]}
            add("gauge", "apccache_pool_workers", "Workers the pool should run.", p["workers"], pl)
            add("gauge", "apccache_pool_workers_ready", "Workers of the pool idle or busy.", p["ready"], pl)
            add("counter", "apccache_pool_jobs", "Jobs finished.", p["jobs"], pl)
            add("counter", "apccache_pool_job_errors", "Jobs that raised.", p["job_errors"], pl)
            add("counter", "apccache_pool_time_limits", "Jobs stopped by their time limit.", p["time_limits"], pl)
            add("counter", "apccache_pool_time_limit_kills", "Workers killed past hard_kill_after.",
                p["time_limit_kills"], pl)
            add("counter", "apccache_pool_crashes", "Workers that died outside a requested stop.", p["crashes"], pl)
            add("counter", "apccache_pool_lost_jobs", "Jobs in flight when their worker died.", p["lost_jobs"], pl)
            add("counter", "apccache_pool_rotations", "Workers replaced after max_jobs or memory_limit.",
                p["rotations"], pl)
            add("counter", "apccache_pool_restarts", "Workers started to replace another.", p["restarts"], pl)
        states = {}
        for w in sv["workers"]:
            key = (w["pool"], w["state"])
            states[key] = states.get(key, 0) + 1
        for p in sv["pools"]:
            for state in ("starting", "idle", "busy", "stopping"):
                states.setdefault((p["name"], state), 0)
        for (pool, state), n in sorted(states.items(), key=lambda kv: (str(kv[0][0]), str(kv[0][1]))):
            add("gauge", "apccache_pool_workers_by_state", "Worker processes of the pool in each state.", n,
                {"segment": seg, "pool": pool, "state": state})
        newest = {}
        for w in sv["workers"]:  # one series per worker slot and generation; the newest process wins
            newest[(w["pool"], w["worker_id"], w["generation"])] = w
        for w in newest.values():
            wl = {"segment": seg, "pool": w["pool"], "worker": str(w["worker_id"]),
                  "generation": str(w["generation"])}
            add("gauge", "apccache_worker_memory_bytes", "A worker's private memory.", w["memory"], wl)
            add("gauge", "apccache_worker_jobs", "Jobs the worker's current process has finished.", w["jobs"], wl)
            add("gauge", "apccache_worker_restarts", "Processes the worker's slot has had before this one.",
                w["restarts"], wl)
            add("gauge", "apccache_worker_job_runtime_seconds", "How long the current job has run (absent when "
                "idle).", w["job_runtime"], wl)
    return order + hists


def _dedupe(buckets):
    """Histogram buckets with distinct bounds, in order (the last wins)."""
    out = {}
    for le, n in buckets:
        out[le] = n
    return list(out.items())


def exposition(st):
    """The Prometheus text exposition of one ``collect()`` dict."""
    from prometheus_client import CollectorRegistry, generate_latest

    class _Fixed:
        def collect(self):
            return families(st)

        def describe(self):
            return []

    reg = CollectorRegistry(auto_describe=False)
    reg.register(_Fixed())
    return generate_latest(reg).decode()
