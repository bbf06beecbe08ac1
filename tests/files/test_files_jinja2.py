"""The Jinja2 bytecode cache in the segment, with real templates."""
import os

import pytest

jinja2 = pytest.importorskip("jinja2")

from apccache.files import UnsafeSegmentError  # noqa: E402
from apccache.integrations.jinja2 import SharedBytecodeCache  # noqa: E402

from helpers.children import run_py  # noqa: E402

BASE = """<html><head><title>{% block title %}Site{% endblock %}</title></head>
<body>{% block body %}{% endblock %}</body></html>
"""
MACROS = """{% macro row(item) -%}
<tr><td>{{ loop_index }}</td><td>{{ item.name|title }}</td><td>{{ '%.1f'|format(item.price) }}</td></tr>
{%- endmacro %}
"""
PAGE = """{% extends "base.html" %}{% import "macros.html" as m %}
{% block title %}{{ title }} - {{ super() }}{% endblock %}
{% block body %}<table>{% for item in items %}{{ m.row(item) }}{% else %}<tr>none</tr>{% endfor %}</table>
{% if user %}<p>hello {{ user|e }}</p>{% endif %}{% include "footer.html" %}{% endblock %}
"""
FOOTER = "<footer>{{ items|length }} items</footer>\n"

ITEMS = [{"name": "apple", "price": 1.5}, {"name": "pear", "price": 2}]

CHILD = """
import sys, json, jinja2, apccache
from apccache.integrations.jinja2 import SharedBytecodeCache
seg, root = sys.argv[1:3]
env = jinja2.Environment(loader=jinja2.FileSystemLoader(root), autoescape=True,
                         bytecode_cache=SharedBytecodeCache(apccache.Cache.attach(seg)))
compiled = []
real = env.compile
def counting(source, name=None, filename=None, *a, **k):
    compiled.append(name)
    return real(source, name, filename, *a, **k)
env.compile = counting
html = env.get_template("page.html").render(title="Fruit", items=%s, user="<bob>")
print(json.dumps({"html": html, "compiled": compiled}))
""" % repr(ITEMS)


@pytest.fixture
def templates(tree):
    tree("t/base.html", BASE)
    tree("t/macros.html", MACROS)
    tree("t/page.html", PAGE)
    tree("t/footer.html", FOOTER)
    return str(tree.root / "t")


def env_for(cache, root, **kw):
    return jinja2.Environment(loader=jinja2.FileSystemLoader(root), autoescape=True,
                              bytecode_cache=SharedBytecodeCache(cache), **kw)


def test_a_fresh_process_renders_from_the_segment_without_compiling(cache, templates):
    html = env_for(cache, templates).get_template("page.html").render(title="Fruit", items=ITEMS, user="<bob>")
    assert "Fruit - Site" in html and "Apple" in html and "&lt;bob&gt;" in html and "2 items" in html
    assert len(SharedBytecodeCache(cache)) == 4
    out = run_py(CHILD, cache.name, templates)
    assert out["html"] == html
    assert out["compiled"] == [], "every template came from the segment"


def test_an_edited_template_is_recompiled_in_the_next_process(cache, templates):
    run_py(CHILD, cache.name, templates)
    with open(os.path.join(templates, "footer.html"), "w") as f:
        f.write("<footer>edited</footer>\n")
    out = run_py(CHILD, cache.name, templates)
    assert "edited" in out["html"] and out["compiled"] == ["footer.html"]
    assert run_py(CHILD, cache.name, templates)["compiled"] == []


def test_user_cache_clear_keeps_templates_and_bytecode_cache_clear_drops_them(cache, templates):
    env_for(cache, templates).get_template("page.html")
    cache.clear()
    assert len(SharedBytecodeCache(cache)) == 1
    SharedBytecodeCache(cache).clear()
    assert len(SharedBytecodeCache(cache)) == 0


def test_environments_that_compile_differently_do_not_share_entries(cache, tree):
    tree("d/x.html", "<%= 1 + 1 %>{{ 1 + 1 }}")
    root = str(tree.root / "d")
    assert env_for(cache, root).get_template("x.html").render() == "<%= 1 + 1 %>2"
    odd = env_for(cache, root, variable_start_string="<%=", variable_end_string="%>")
    assert odd.get_template("x.html").render() == "2{{ 1 + 1 }}"
    assert len(SharedBytecodeCache(cache)) == 2


def test_a_segment_writable_by_others_is_refused(cache):
    os.chmod(f"/dev/shm/{cache.name}", 0o666)
    try:
        with pytest.raises(UnsafeSegmentError):
            SharedBytecodeCache(cache)
    finally:
        os.chmod(f"/dev/shm/{cache.name}", 0o600)
