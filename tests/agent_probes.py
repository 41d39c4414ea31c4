"""What the script agents of the end-to-end tests run first in the sandbox: the ``results`` they
print, ``attempt`` (records "open" when an action worked, else the exception's name: an
attacker's try at the sandbox's edges), ``first`` (the first file a glob finds, else a path
that cannot exist, so a missing file is never mistaken for one the agent could write) and
``unix`` (connect to a Unix socket). Prepend ``PRELUDE`` to the agent's own Python."""

PRELUDE = r"""
import glob, json, os, pathlib, socket, subprocess, urllib.request
results = {}
def attempt(name, action):
    try:
        action()
        results[name] = "open"
    except Exception as exc:
        results[name] = type(exc).__name__
def first(pattern):
    found = [p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p)]
    return (found or ["/nonexistent/" + pattern])[0]
def unix(path):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(3)
    s.connect(path)
"""
