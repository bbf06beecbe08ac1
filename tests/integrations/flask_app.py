"""A small Flask app on apccache's Flask-Caching backend (for
test_flask.py's worker processes).  APC_FLASK_SEGMENT names the segment."""
import os

import flask
import flask_caching

app = flask.Flask(__name__)
app.config.update(
    CACHE_TYPE="apccache.integrations.flask.ApcCache",
    CACHE_APCCACHE_NAME=os.environ["APC_FLASK_SEGMENT"],
    CACHE_APCCACHE_SIZE="8M",
    CACHE_DEFAULT_TIMEOUT=300,
    CACHE_KEY_PREFIX="flask_",
)
cache = flask_caching.Cache(app)


@app.route("/cached")
@cache.cached(timeout=60)
def cached_view():
    return f"rendered by {os.getpid()}"


@cache.memoize(timeout=60)
def square(n):
    return f"{n * n} by {os.getpid()}"


@app.route("/square/<int:n>")
def square_view(n):
    return square(n)


@app.route("/forget/<int:n>")
def forget_view(n):
    cache.delete_memoized(square, n)
    return "forgotten"
