#!/usr/bin/env python3
"""Make tests/data/calib/calib.txt (the default GPTQ calibration text) and
tests/data/calib/heldout.txt (text of the same kind from other modules, for
judging a calibration on text it did not see).

The text is the docstrings of a fixed list of Python standard-library
modules (CPython, Python Software Foundation License): English prose about
programming mixed with code examples, public and permissively licensed, and
no evaluation set (not GSM8K, MATH, wikitext or C4). Modules and their
public members are walked in a fixed order, short and repeated docstrings
are dropped, each module gives at most PER_MODULE bytes (so many topics are
sampled) and the output stops before MAX_BYTES.

The exact text depends on the Python version (docstrings change between
releases); the committed file was made with the version named in
tests/data/calib/README.md. Run from the repository root:

    python3 tools/ref/make_calib_text.py [--out-dir tests/data/calib]
"""
import argparse
import importlib
import inspect
import sys
import warnings

MAX_BYTES = 190_000
PER_MODULE = 4_000
MIN_DOC = 80  # characters: skip one-line stubs

MODULES = [
    "collections", "functools", "itertools", "json", "argparse", "pathlib", "textwrap",
    "string", "datetime", "decimal", "fractions", "statistics", "heapq", "bisect", "csv",
    "logging", "subprocess", "threading", "queue", "shutil", "tempfile", "unittest",
    "typing", "dataclasses", "enum", "inspect", "random", "re", "os", "urllib.parse",
    "http.client", "email.message", "zipfile", "tarfile", "sqlite3", "asyncio", "socket",
    "contextlib", "abc", "copy", "pickle", "struct", "difflib", "pprint", "calendar",
    "hashlib", "base64", "gzip", "io", "operator", "weakref", "locale", "gettext",
]
# Disjoint from MODULES (and not imported by them for their docs).
HELDOUT_MODULES = ["ftplib", "smtplib", "imaplib", "mailbox", "configparser", "sched",
                   "selectors", "wave", "optparse", "xml.dom.minidom"]
HELDOUT_BYTES = 6_000


def members(mod):
    """(qualified name, docstring) for a module, its public classes and
    functions, and the public methods of those classes, in sorted order."""
    yield mod.__name__, inspect.getdoc(mod)
    for name in sorted(dir(mod)):
        if name.startswith("_"):
            continue
        obj = getattr(mod, name, None)
        if not (inspect.isclass(obj) or inspect.isroutine(obj)):
            continue
        if getattr(obj, "__module__", None) not in (mod.__name__, None):
            continue  # re-exported from elsewhere
        yield f"{mod.__name__}.{name}", inspect.getdoc(obj)
        if inspect.isclass(obj):
            for mname in sorted(vars(obj)):
                if mname.startswith("_"):
                    continue
                meth = getattr(obj, mname, None)
                if inspect.isroutine(meth):
                    yield f"{mod.__name__}.{name}.{mname}", inspect.getdoc(meth)


def collect(modules, max_bytes, per_module, seen):
    """Docstring entries of modules, in order, within the byte budgets."""
    parts, size = [], 0
    for modname in modules:
        try:
            mod = importlib.import_module(modname)
        except ImportError:
            continue
        mod_size = 0
        for qual, doc in members(mod):
            if not doc or len(doc) < MIN_DOC or doc in seen:
                continue
            seen.add(doc)
            part = f"{qual}\n{doc.strip()}\n\n"
            n = len(part.encode("utf-8"))
            if size + n > max_bytes or mod_size + n > per_module:
                continue
            parts.append(part)
            size += n
            mod_size += n
    return "".join(parts)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out-dir", default="tests/data/calib")
    args = ap.parse_args()
    warnings.simplefilter("ignore")  # deprecated aliases met while walking modules
    seen = set()
    for name, text in (("calib.txt", collect(MODULES, MAX_BYTES, PER_MODULE, seen)),
                       ("heldout.txt", collect(HELDOUT_MODULES, HELDOUT_BYTES, 1_500, seen))):
        path = f"{args.out_dir}/{name}"
        with open(path, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
        print(f"{path}: {len(text.encode('utf-8'))} bytes, Python {sys.version.split()[0]}")


if __name__ == "__main__":
    main()
