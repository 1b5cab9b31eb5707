"""Throughput and memory of ``mtllm predict`` on a large file: peak RSS must not grow with the rows read.

Writes N rows (default 100000) of synthetic text to a CSV in a temporary folder, runs
``python -m mtllm predict`` on it with a given model folder, samples the child's resident memory (``VmRSS``
and its peak ``VmHWM`` from ``/proc/PID/status``) while it runs, follows its progress from the
``<output>.progress.json`` record it writes after each chunk, and prints rows/s and RSS at 10 %, 50 % and
100 % of the rows::

    python benchmarks/predict_rss.py --model runs/pocket/distill-sib200/final            # 100000 rows
    python benchmarks/predict_rss.py --model /tmp/tiny-model --rows 2000 --chunk_size 256

Constant memory shows as RSS at 100 % close to RSS at 10 % (the model and one chunk), not growing with N.
Linux only (``/proc``). Extra arguments after ``--`` go to ``mtllm predict`` (e.g. ``-- --batch_size 64``).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORDS = ("the a cat dog sleeps runs on in warm cold mat park every morning government election results team "
         "won championship scientists discovered species frog rainforest tourists visit old city temples").split()


def write_rows(path: Path, n: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "text"])
        for i in range(n):
            writer.writerow([f"row{i}", " ".join(rng.choices(WORDS, k=rng.randint(3, 40))) + "."])


def memory_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of ``pid`` in KiB; (0, 0) once it is gone."""
    try:
        fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                      if ":" in line)
    except OSError:
        return 0, 0
    return tuple(int(fields.get(k, "0 kB").split()[0]) for k in ("VmRSS", "VmHWM"))


def rows_done(progress: Path) -> int:
    try:
        return int(json.loads(progress.read_text())["rows_done"])
    except (OSError, ValueError, KeyError):
        return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="an MT-LLM folder with a task head")
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--chunk_size", type=int, default=4096)
    parser.add_argument("--lang", default="eng_Latn")
    parser.add_argument("--interval", type=float, default=0.05, help="seconds between memory samples")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="mtllm-predict-rss-") as tmp:
        tmp = Path(tmp)
        src, out = tmp / "texts.csv", tmp / "preds.jsonl"
        write_rows(src, args.rows)
        print(f"input: {args.rows} rows, {src.stat().st_size / 2**20:.1f} MiB", flush=True)
        progress = out.with_name(out.name + ".progress.json")
        cmd = [sys.executable, "-m", "mtllm", "predict", "--model", args.model, "--input", str(src), "--id_column",
               "id", "--lang", args.lang, "--output", str(out), "--chunk_size", str(args.chunk_size),
               "--progress", "false", *extra]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        log = open(tmp / "log.txt", "w")
        t_start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        marks = {0.1: None, 0.5: None, 1.0: None}
        first_row_at = None  # when the first chunk was recorded (model loaded): rows/s excludes start-up
        first_rows = 0
        peak_rss = 0
        while proc.poll() is None:
            rss, hwm = memory_kib(proc.pid)
            peak_rss = max(peak_rss, hwm, rss)
            done = rows_done(progress)
            now = time.perf_counter()
            if done and first_row_at is None:
                first_row_at, first_rows = now, done
            for frac in marks:
                if marks[frac] is None and done >= frac * args.rows and done and rss:
                    marks[frac] = (done, now - t_start, rss, max(hwm, rss))
            time.sleep(args.interval)
        t_end = time.perf_counter()
        log.close()
        if proc.returncode != 0:
            print((tmp / "log.txt").read_text()[-3000:], file=sys.stderr)
            print(f"mtllm predict failed (rc {proc.returncode})", file=sys.stderr)
            return 1
        n_out = sum(1 for _ in open(out, encoding="utf-8"))
        assert n_out == args.rows, f"{n_out} output rows for {args.rows} input rows"
        print(f"{'progress':>9} {'rows':>8} {'seconds':>8} {'RSS MiB':>8} {'peak MiB':>9}")
        for frac, mark in marks.items():
            if mark is None:
                print(f"{frac:>8.0%}  (not sampled: the run was faster than --interval)")
                continue
            done, secs, rss, hwm = mark
            print(f"{frac:>8.0%} {done:>8} {secs:>8.1f} {rss / 1024:>8.1f} {hwm / 1024:>9.1f}")
        timed_rows = args.rows - first_rows
        if first_row_at is not None and timed_rows > 0 and t_end > first_row_at:
            rate = f"{timed_rows / (t_end - first_row_at):.1f} rows/s after the first chunk"
        else:
            rate = "n/a"
        print(f"total {t_end - t_start:.1f} s (with start-up and model loading): {args.rows / (t_end - t_start):.1f} "
              f"rows/s overall, {rate}; peak RSS {peak_rss / 1024:.1f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
