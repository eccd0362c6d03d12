"""Check ballastd's /metrics page with an independent parser.

usage: /usr/bin/python3 check_prom.py DOCS_METRICS_MD COMMAND [ARGS...]

Runs COMMAND (test_metrics --dump DATA_DIR), which prints a page where every
family has samples, and fails unless:
  - prometheus_client's text parser (Debian's python3-prometheus-client)
    reads it, with no untyped family (a sample outside its TYPE) and no
    family twice;
  - every line matches the 0.0.4 grammar (the library's parser is lax);
  - histograms are cumulative, end with le="+Inf" equal to _count, have _sum;
  - no series (name and labels) repeats;
  - the families, types and label names are those of docs/metrics.md, and
    every documented family has samples;
  - the pool label with a quote, a backslash and a newline reads back as
    test_metrics.c's ODD_POOL.
Before that it feeds itself broken pages, so a checker that accepts anything
fails too."""
import math
import re
import subprocess
import sys

try:
    from prometheus_client.parser import text_string_to_metric_families
except ImportError:
    sys.exit("check_prom.py: needs python3-prometheus-client (apt-get install "
             "python3-prometheus-client) under /usr/bin/python3")

ODD_POOL = 'odd "pool" \\ with\nnewline'  # test_metrics.c's ODD_POOL

NAME = r'[a-zA-Z_:][a-zA-Z0-9_:]*'
LABEL = r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*"'
VALUE = r'(?:[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?|[-+]Inf|NaN)'
SAMPLE_RE = re.compile(r'^%s(?:\{(?:%s(?:,%s)*)?\})? %s$' % (NAME, LABEL, LABEL, VALUE))
HELP_RE = re.compile(r'^# HELP %s (?:[^\\\n]|\\[\\n])*$' % NAME)
TYPE_RE = re.compile(r'^# TYPE %s (?:counter|gauge|histogram|summary|untyped)$' % NAME)


class Bad(Exception):
    pass


def check_lines(text):
    if not text.endswith('\n'):
        raise Bad('no final newline')
    headers = set()
    for i, line in enumerate(text[:-1].split('\n'), 1):
        if not (SAMPLE_RE.match(line) or HELP_RE.match(line) or TYPE_RE.match(line)):
            raise Bad('line %d breaks the 0.0.4 grammar: %r' % (i, line))
        # the parser merges a repeated header into the family it is in
        if line.startswith('#'):
            if tuple(line.split()[1:3]) in headers:
                raise Bad('line %d: a second %s' % (i, line))
            headers.add(tuple(line.split()[1:3]))


def check_histogram(fam):
    series = {}
    for s in fam.samples:
        key = tuple(sorted((k, v) for k, v in s.labels.items() if k != 'le'))
        h = series.setdefault(key, {'buckets': [], 'sum': None, 'count': None})
        if s.name.endswith('_bucket'):
            h['buckets'].append((float(s.labels['le']), s.value))
        elif s.name.endswith('_sum'):
            h['sum'] = s.value
        elif s.name.endswith('_count'):
            h['count'] = s.value
    for key, h in series.items():
        b = h['buckets']
        if not b or b[-1][0] != math.inf:
            raise Bad('%s%s: no le="+Inf" bucket last' % (fam.name, key))
        for (le0, c0), (le1, c1) in zip(b, b[1:]):
            if not (le1 > le0 and c1 >= c0):
                raise Bad('%s%s: buckets not ascending and cumulative' % (fam.name, key))
        if h['count'] != b[-1][1] or h['sum'] is None:
            raise Bad('%s%s: _count != +Inf bucket, or no _sum' % (fam.name, key))


def parse(text):
    """The families of a page, checked; raises Bad (or the parser's error)."""
    check_lines(text)
    fams, seen = {}, set()
    for fam in text_string_to_metric_families(text):
        if fam.type in ('untyped', 'unknown'):  # the library renames untyped
            raise Bad('sample outside its family: %s' % fam.name)
        if fam.name in fams:
            raise Bad('family %s appears twice' % fam.name)
        if not fam.documentation:
            raise Bad('family %s has no HELP' % fam.name)
        fams[fam.name] = fam
        for s in fam.samples:
            series = (s.name, tuple(sorted(s.labels.items())))
            if series in seen:
                raise Bad('series repeated: %r' % (series,))
            seen.add(series)
        if fam.type == 'histogram':
            check_histogram(fam)
    return fams


def rejects(text):
    try:
        parse(text)
    except Exception:  # the parser raises ValueError and others
        return True
    return False


def self_test():
    head = '# HELP x_total X.\n# TYPE x_total counter\n'
    hist = '# HELP h H.\n# TYPE h histogram\n'
    good = head + 'x_total{a="q\\"\\\\\\n"} 1\n'
    bad = {
        'unescaped quote': head + 'x_total{a="q"q"} 1\n',
        'raw newline': head + 'x_total{a="q\nq"} 1\n',
        'family split': head + 'x_total{a="1"} 1\n' + head + 'x_total{a="2"} 1\n',
        'sample outside its family': head + 'y_total 1\n',
        'no TYPE': '# HELP x_total X.\nx_total 1\n',
        'bad value': head + 'x_total one\n',
        'repeated series': head + 'x_total{a="1"} 1\nx_total{a="1"} 2\n',
        'not cumulative': hist + 'h_bucket{le="1"} 2\nh_bucket{le="+Inf"} 1\nh_sum 1\nh_count 1\n',
        'no +Inf': hist + 'h_bucket{le="1"} 1\nh_sum 1\nh_count 1\n',
        'count != +Inf': hist + 'h_bucket{le="1"} 1\nh_bucket{le="+Inf"} 1\nh_sum 1\nh_count 2\n',
    }
    if rejects(good):
        sys.exit('check_prom.py self-test: a good page was rejected')
    for what, text in bad.items():
        if not rejects(text):
            sys.exit('check_prom.py self-test: accepted a page with %s' % what)


def doc_table(path):
    """{family: (type, [label names])} from docs/metrics.md's table."""
    rows = {}
    for line in open(path, encoding='utf-8'):
        m = re.match(r'^\| `(ballast_\w+)` \| (\w+) \| ([^|]*) \|', line)
        if m:
            labels = [x.strip() for x in m.group(3).split(',') if x.strip()]
            rows[m.group(1)] = (m.group(2), labels)
    if len(rows) < 40:
        sys.exit('%s: only %d metrics in its table' % (path, len(rows)))
    return rows


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    self_test()
    docs = doc_table(sys.argv[1])
    run = subprocess.run(sys.argv[2:], stdout=subprocess.PIPE)
    if run.returncode != 0:
        sys.exit('%s exited %d' % (sys.argv[2], run.returncode))
    text = run.stdout.decode('utf-8')
    try:
        fams = parse(text)
    except Exception as e:
        sys.exit('the page is broken: %s' % e)
    errors = []
    # prometheus_client names a counter family without _total
    names = {(n + '_total' if f.type == 'counter' else n): f for n, f in fams.items()}
    for name in sorted(set(names) | set(docs)):
        if name not in names or name not in docs:
            errors.append('%s: %s' % (name, 'not on the page' if name in docs else 'not in the docs'))
            continue
        fam, (typ, labels) = names[name], docs[name]
        if fam.type != typ:
            errors.append('%s: type %s, docs say %s' % (name, fam.type, typ))
        if not fam.samples:
            errors.append('%s: no samples in the dump' % name)
        for s in fam.samples:
            want = labels + (['le'] if s.name.endswith('_bucket') else [])
            if sorted(s.labels) != sorted(want):
                errors.append('%s: labels %s, docs say %s' % (s.name, sorted(s.labels), want))
                break
    pools = {s.labels.get('pool') for f in fams.values() for s in f.samples}
    if ODD_POOL not in pools:
        errors.append('pool label %r not read back; pools: %r' % (ODD_POOL, sorted(p for p in pools if p)))
    for e in errors:
        print('check_prom.py:', e, file=sys.stderr)
    print('%d families, %d samples, %d errors' % (
        len(fams), sum(len(f.samples) for f in fams.values()), len(errors)))
    sys.exit(1 if errors else 0)


if __name__ == '__main__':
    main()
