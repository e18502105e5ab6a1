"""The bytes a `diet datasets pull` downloads for one ML-100K version, through a real `diet serve`.

A stream of ML-100K with the default reference (DCN, 32-dim embeddings), block b1, stage 1 distilled
with a two-iteration loop (the loop does not change the files' sizes), then `diet datasets pull
--json` in a process of its own; the bytes are those of the files it wrote. `--repo` measures
another checkout (e.g. an older commit, unpacked with `git archive`) with this one's Python.

    python benchmarks/pull_bytes.py --data ../shared/data/ml-100k --label after --out benchmarks/results/pull-bytes.json
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from diet_engine.data.convert.ml_100k import convert_ml100k

HERE = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _git_commit(repo: Path) -> str:
    try:
        return subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()  # fmt: skip
    except subprocess.CalledProcessError:
        return "unknown (not a git checkout)"


def measure(repo: Path, raw: Path, work: Path) -> dict:
    blocks = work / "ml-100k"
    convert_ml100k(raw, blocks)
    token = secrets.token_hex(16)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": str(repo), "DIET_DATA_DIR": str(work / "data"), "DIET_BOOTSTRAP_TOKEN": token,
           "DIET_WORKER_DEVICE": "cpu"}  # fmt: skip
    with open(work / "serve.log", "wb") as log:
        serve = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--port", str(port)], cwd=repo, env=env,
                                 stdout=log, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    try:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60) as c:
            deadline = time.monotonic() + 120
            while True:
                try:
                    if c.get("/healthz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError((work / "serve.log").read_text()[-4000:])
                time.sleep(0.25)
            schema = json.loads((blocks / "schema.json").read_text())
            c.post("/streams", json={"name": "ml_100k", "schema": schema}).raise_for_status()
            c.post("/blocks", params={"stream": "ml_100k"}, content=(blocks / "b1.parquet").read_bytes(),
                   headers={"Content-Type": "application/vnd.apache.parquet"}).raise_for_status()  # fmt: skip
            job = c.post("/jobs/distill", json={"stream": "ml_100k", "stage": 1, "overrides": {"outer_iters": 2}})
            job.raise_for_status()
            while (state := c.get(f"/jobs/{job.json()['id']}").json())["status"] in ("queued", "running"):
                time.sleep(1)
            if state["status"] != "succeeded":
                raise RuntimeError(f"{state}\n{(work / 'serve.log').read_text()[-4000:]}")
        to = work / "pulled"
        pulled = subprocess.run(
            [sys.executable, "-m", "service.cli", "datasets", "pull", "ml_100k@v1", "--to", str(to), "--json"],
            cwd=repo, env={**env, "DIET_URL": url, "DIET_TOKEN": token}, capture_output=True, text=True, check=True,
        )  # fmt: skip
        listed = json.loads(pulled.stdout)
        files = {p.name: p.stat().st_size for p in sorted(to.iterdir()) if p.is_file()}
        assert set(files) == {f["name"] for f in listed["files"]}, (files, listed)
        return {"commit": _git_commit(repo), "files": files, "total_bytes": sum(files.values())}
    finally:
        serve.terminate()
        serve.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="the raw ML-100K folder (u.data, u.user, u.item)")
    parser.add_argument("--repo", type=Path, default=HERE, help="the checkout whose service and CLI are measured")
    parser.add_argument("--label", required=True, help="the key of this measurement in --out")
    parser.add_argument("--out", type=Path, help="a JSON file of measurements by label (merged into)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="diet-pull-bytes-") as work:
        result = measure(args.repo.resolve(), args.data.resolve(), Path(work))
    print(json.dumps({args.label: result}, indent=2))
    if args.out:
        known = json.loads(args.out.read_text()) if args.out.exists() else {}
        args.out.write_text(json.dumps({**known, args.label: result}, indent=2) + "\n")


if __name__ == "__main__":
    main()
