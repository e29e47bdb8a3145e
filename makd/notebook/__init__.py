"""Notebook support: the papermill runner, profiles, notebook helpers, plotting, per-notebook views."""
