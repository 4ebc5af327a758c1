"""Print the cluster's alive node count once a second: `python node_watch.py ADDRESS OUT`.

A separate driver process (it holds no resources), so the test process stays out of the cluster.
Each line of OUT: unix time, alive nodes, alive worker nodes with CPUs.
"""

import sys
import time

import ray


def main(address: str, out: str) -> None:
    ray.init(address=address, log_to_driver=False, logging_level="ERROR")
    with open(out, "a", buffering=1) as f:
        while True:
            nodes = [n for n in ray.nodes() if n["Alive"]]
            workers = [n for n in nodes if n["Resources"].get("CPU", 0) > 0]
            f.write(f"{time.time():.1f} {len(nodes)} {len(workers)}\n")
            time.sleep(1)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
