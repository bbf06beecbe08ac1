"""Integrations of apccache's file cache with other libraries.

Each lives in its own module and imports its library only when imported
itself: ``apccache.integrations.jinja2`` needs Jinja2, nothing else does.
"""
