"""Import a large real package in fresh processes, with and without the
opcode cache; and load a Jinja2 template with and without the shared
bytecode cache.

Usage: python bench/opcode_import.py [--rounds 7] [--package sympy] [--json PATH] [--md PATH]

Set-up: the package (sympy and its dependency mpmath by default) is copied
twice into a private directory, ``src/`` without any ``__pycache__`` and
``pyc/`` byte-compiled with compileall; apccache's own modules are
byte-compiled in place (a deployment has them).  Every child is a fresh
interpreter with ``PYTHONDONTWRITEBYTECODE=1`` whose sys.path starts with
one of the copies; it times, from the first line of its script, everything
it does: importing apccache, attaching and installing where the scenario
does, then ``import <package>``.

One scenario per function below; each round runs every scenario once, in a
shuffled order (seeded), and every figure is a median over rounds.  The targets are
judged on paired ratios (the median over rounds of the ratio within a
round), on the children's wall-clock import time; the children's CPU time
(user + system, whole process) is shown beside it.
"""
import argparse
import json
import os
import random
import resource
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

try:
    from benchlib import machine_line
except Exception:  # the shared helpers are optional here
    def machine_line(info=None):
        import platform
        return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"

import apccache  # noqa: E402

CHILD = r"""
import time
t0 = time.perf_counter()
import sys, json
mode, seg, root, package = sys.argv[1:5]
sys.path.insert(0, root)
if mode != "none":
    import apccache, apccache.opcode
    cache = apccache.Cache.attach(seg)
    apccache.opcode.install(cache, mode)
ti = time.perf_counter()
__import__(package)
t1 = time.perf_counter()
out = {"t": t1 - t0, "t_import": t1 - ti, "modules": len(sys.modules)}
if mode != "none":
    out["process"] = apccache.opcode.installed().info()["process"]
print(json.dumps(out))
"""

JINJA_CHILD = r"""
import sys, json, time
mode, seg, root = sys.argv[1:4]
import jinja2
kw = {}
if mode == "shared":
    import apccache
    from apccache.integrations.jinja2 import SharedBytecodeCache
    kw["bytecode_cache"] = SharedBytecodeCache(apccache.Cache.attach(seg))
env = jinja2.Environment(loader=jinja2.FileSystemLoader(root), autoescape=True, **kw)
t0 = time.perf_counter()
tpl = env.get_template("page.html")
t1 = time.perf_counter()
assert "Row 7" in tpl.render(title="t", rows=[{"name": f"Row {i}", "value": i, "tags": ["a", "b"]} for i in range(10)], user={"name": "u", "admin": True})
print(json.dumps({"t": t1 - t0, "t_import": t1 - t0}))
"""


def _template(n_sections=40):
    """A page template of realistic size: macros, loops, conditionals, filters."""
    head = """{% macro field(name, value, kind='text') -%}
<label for="{{ name }}">{{ name|title }}</label>
<input type="{{ kind }}" name="{{ name }}" value="{{ value|e }}">
{%- endmacro %}
{% macro badge(tag) %}<span class="badge badge-{{ tag|lower }}">{{ tag|upper }}</span>{% endmacro %}
<!doctype html><html><head><title>{{ title|default('Untitled') }}</title></head><body>
{% if user.admin %}<nav>admin {{ user.name }}</nav>{% else %}<nav>{{ user.name }}</nav>{% endif %}
"""
    section = """<section id="s{i}">
  <h2>Section {i}: {{{{ title }}}}</h2>
  <table>{{% for row in rows %}}
    <tr class="{{{{ loop.cycle('odd', 'even') }}}}">
      <td>{{{{ loop.index }}}}</td><td>{{{{ row.name }}}}</td>
      <td>{{{{ '%.2f'|format(row.value * {i}) }}}}</td>
      <td>{{% for t in row.tags %}}{{{{ badge(t) }}}}{{% endfor %}}</td>
      <td>{{% if row.value > {i} %}}big{{% elif row.value == {i} %}}equal{{% else %}}small{{% endif %}}</td>
    </tr>{{% else %}}<tr><td>empty</td></tr>{{% endfor %}}
  </table>
  <form>{{{{ field('name{i}', user.name) }}}}{{{{ field('count{i}', rows|length, 'number') }}}}</form>
  {{% set total = rows|sum(attribute='value') %}}<p>total {{{{ total }}}}, {{{{ rows|map(attribute='name')|join(', ')|truncate(40) }}}}</p>
</section>
"""
    return head + "".join(section.format(i=i) for i in range(n_sections)) + "</body></html>\n"


class Bench:
    def __init__(self, package, extra, workdir):
        self.package = package
        self.workdir = workdir
        self.src = os.path.join(workdir, "src")
        self.pyc = os.path.join(workdir, "pyc")
        self.tpl = os.path.join(workdir, "templates")
        self.env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
        self.env.pop("PYTHONPYCACHEPREFIX", None)
        self.segments = []
        for dest in (self.src, self.pyc):
            os.makedirs(dest)
            for name in [package] + extra:
                mod = __import__(name)
                d = os.path.dirname(mod.__file__)
                shutil.copytree(d, os.path.join(dest, name),
                                ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        os.makedirs(self.tpl)
        with open(os.path.join(self.tpl, "page.html"), "w") as f:
            f.write(_template())
        old = time.time() - 3600  # older than protect_s (then compile: .pyc record the mtime)
        for root, _dirs, files in os.walk(workdir):
            for n in files:
                os.utime(os.path.join(root, n), (old, old))
        subprocess.run([sys.executable, "-m", "compileall", "-q", "-j", "0", self.pyc],
                       check=True, stdout=subprocess.DEVNULL)
        subprocess.run([sys.executable, "-m", "compileall", "-q", os.path.dirname(apccache.__file__)],
                       check=True, stdout=subprocess.DEVNULL)
        self.warm_stat = self.new_segment()
        self.warm_nostat = self.new_segment()
        self.warm_jinja = self.new_segment()
        self.warm_pyc = self.new_segment()
        self.child("stat", self.warm_pyc.name, self.pyc)
        # The first worker of each warm segment (not timed).
        self.child("stat", self.warm_stat.name, self.src)
        self.child("no-stat", self.warm_nostat.name, self.src)
        self.jinja("shared", self.warm_jinja.name)

    def new_segment(self):
        c = apccache.Cache.create(f"apcbench-{secrets.token_hex(4)}", size=512 << 20)
        self.segments.append(c)
        return c

    def drop(self, c):
        c.unlink()
        c.close()
        self.segments.remove(c)

    def close(self):
        for c in list(self.segments):
            self.drop(c)

    def _run(self, args):
        r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        p = subprocess.run([sys.executable, "-c"] + args, env=self.env, capture_output=True, text=True,
                           timeout=600)
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        if p.returncode != 0:
            raise RuntimeError(f"child failed ({p.returncode}): {p.stderr[-2000:]}")
        out = json.loads(p.stdout.strip().splitlines()[-1])
        out["cpu"] = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
        return out

    def child(self, mode, seg, root):
        return self._run([CHILD, mode, seg, root, self.package])

    def jinja(self, mode, seg):
        return self._run([JINJA_CHILD, mode, seg, self.tpl])

    # ------------------------------------------------------------ scenarios

    def a_recompile(self):
        """(a) No hook, no .pyc: every module is compiled from source."""
        return self.child("none", "-", self.src)

    def b_warm_pyc(self):
        """(b) No hook, valid .pyc files: the stock import system at its best."""
        return self.child("none", "-", self.pyc)

    def c_hook_stat(self):
        """(c) Hook in stat mode, warm segment, no .pyc."""
        return self.child("stat", self.warm_stat.name, self.src)

    def c_hook_nostat(self):
        """(c) Hook in no-stat mode, warm segment, no .pyc."""
        return self.child("no-stat", self.warm_nostat.name, self.src)

    def first_worker(self):
        """Hook in stat mode, cold (empty) segment, no .pyc: the first worker
        compiles everything and stores it."""
        c = self.new_segment()
        try:
            return self.child("stat", c.name, self.src)
        finally:
            self.drop(c)

    def hook_with_pyc(self):
        """Hook in stat mode, warm segment, valid .pyc files present: the
        steady state of a deployment whose __pycache__ is good."""
        return self.child("stat", self.warm_pyc.name, self.pyc)

    def hook_with_pyc_first(self):
        """Hook in stat mode, cold segment, valid .pyc files: the first worker
        reads every module's .pyc and stores it."""
        c = self.new_segment()
        try:
            return self.child("stat", c.name, self.pyc)
        finally:
            self.drop(c)

    def jinja_compile(self):
        """Jinja2 get_template in a fresh process, no bytecode cache: compiles."""
        return self.jinja("none", "-")

    def jinja_shared(self):
        """Jinja2 get_template in a fresh process, SharedBytecodeCache on a warm segment."""
        return self.jinja("shared", self.warm_jinja.name)


SCENARIOS = ["a_recompile", "b_warm_pyc", "c_hook_stat", "c_hook_nostat", "first_worker", "hook_with_pyc",
             "hook_with_pyc_first", "jinja_compile", "jinja_shared"]

# (name, numerator, denominator, limit): numerator / denominator <= limit
TARGETS = [
    ("(c) stat <= 0.20x (a)", "c_hook_stat", "a_recompile", 0.20),
    ("(c) no-stat <= 0.20x (a)", "c_hook_nostat", "a_recompile", 0.20),
    ("(c) stat <= 1.05x (b)", "c_hook_stat", "b_warm_pyc", 1.05),
    ("(c) no-stat <= 0.95x (b)", "c_hook_nostat", "b_warm_pyc", 0.95),
    ("first worker (cold segment) <= 1.05x (a)", "first_worker", "a_recompile", 1.05),
    ("hook with valid .pyc, warm segment <= 1.05x (b)", "hook_with_pyc", "b_warm_pyc", 1.05),
    ("hook with valid .pyc, first worker (cold segment) <= 1.05x (b)", "hook_with_pyc_first", "b_warm_pyc", 1.05),
    ("jinja2 get_template, warm segment <= 0.10x compile", "jinja_shared", "jinja_compile", 0.10),
]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--package", default="sympy")
    ap.add_argument("--extra", default="mpmath", help="comma-separated packages copied alongside")
    ap.add_argument("--json", default=None)
    ap.add_argument("--md", default=None)
    args = ap.parse_args()
    extra = [e for e in args.extra.split(",") if e]
    workdir = tempfile.mkdtemp(prefix=f"apcbench-{secrets.token_hex(4)}-")
    bench = None
    samples = {s: [] for s in SCENARIOS}
    try:
        bench = Bench(args.package, extra, workdir)
        rng = random.Random(4)
        for r in range(args.rounds):
            order = rng.sample(SCENARIOS, len(SCENARIOS))  # a new order each round: no fixed predecessor
            for s in order:
                samples[s].append(getattr(bench, s)())
            print(f"round {r + 1}/{args.rounds}: " + "  ".join(
                f"{s}={samples[s][-1]['t']:.3f}" for s in SCENARIOS), file=sys.stderr, flush=True)
    finally:
        if bench is not None:
            bench.close()
        shutil.rmtree(workdir, ignore_errors=True)

    med = {s: statistics.median(x["t"] for x in v) for s, v in samples.items()}
    cpu = {s: statistics.median(x["cpu"] for x in v) for s, v in samples.items()}
    results = []
    for label, num, den, limit in TARGETS:
        paired = statistics.median(a["t"] / b["t"] for a, b in zip(samples[num], samples[den]))
        paired_cpu = statistics.median(a["cpu"] / b["cpu"] for a, b in zip(samples[num], samples[den]))
        paired_imp = statistics.median(a["t_import"] / b["t_import"] for a, b in zip(samples[num], samples[den]))
        results.append({"target": label, "limit": limit, "paired_ratio": paired, "median_ratio": med[num] / med[den],
                        "cpu_ratio": paired_cpu, "import_only_ratio": paired_imp, "pass": paired <= limit})
    stamp = f"{machine_line()}; {args.rounds} rounds; package {args.package}"
    lines = [f"# Opcode cache: import {args.package} in fresh processes", "", stamp, "",
             "| scenario | median import time | median child CPU | modules |", "|---|---|---|---|"]
    for s in SCENARIOS:
        doc = getattr(Bench, s).__doc__.split(":")[0].strip()
        lines.append(f"| `{s}`: {doc} | {med[s] * 1000:.1f} ms | {cpu[s] * 1000:.1f} ms | "
                     f"{samples[s][0].get('modules', '')} |")
    lines += ["", "| target | paired ratio (wall) | ratio of medians | paired ratio (CPU) | "
              "import statement only | verdict |", "|---|---|---|---|---|---|"]
    for t in results:
        lines.append(f"| {t['target']} | {t['paired_ratio']:.3f} | {t['median_ratio']:.3f} | {t['cpu_ratio']:.3f} | "
                     f"{t['import_only_ratio']:.3f} | {'PASS' if t['pass'] else 'FAIL'} |")
    lines += ["", "*import statement only*: the paired ratio of the time of `import <package>` alone, "
              "without importing apccache, attaching and installing (not what a process pays; shown to "
              "separate the hook's per-module cost from its fixed start-up cost)."]
    text = "\n".join(lines) + "\n"
    print(text)
    for t in results:
        print(f"TARGET {'PASS' if t['pass'] else 'FAIL'} {t['target']}: {t['paired_ratio']:.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"stamp": stamp, "samples": samples, "medians": med, "cpu_medians": cpu,
                       "targets": results}, f, indent=1)
    if args.md:
        with open(args.md, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
