import json
import subprocess
import sys
from pathlib import Path

import pytest

from mammodetr.training.host_memory import _glibc, keep_freed_memory

SRC = Path(__file__).resolve().parents[2] / "src"

# In a fresh process: glibc adapts its thresholds to what the process freed before, so this test must not inherit the
# allocation history of the tests that ran earlier.
PROBE = """
import json, resource, torch
from mammodetr.training.host_memory import keep_freed_memory
torch.manual_seed(0)
net = torch.nn.Sequential(torch.nn.Conv2d(3, 64, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(64, 64, 3, padding=1))
x = torch.rand(2, 3, 256, 256)  # 33.5 MB activations: above glibc's largest heap threshold (32 MB)

def faults(steps=3):
    net(x).square().mean().backward()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(steps):
        net(x).square().mean().backward()
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

released = faults()
with keep_freed_memory() as active:
    kept = faults()
print(json.dumps({"released": released, "kept": kept, "after": faults(), "active": active,
                  "page": resource.getpagesize()}))
"""


@pytest.mark.skipif(_glibc() is None, reason="glibc's allocator only")
def test_freed_activations_are_reused_without_page_faults_and_the_defaults_come_back():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["active"]
    three_activations = 3 * 33 * 2**20 // r["page"]
    assert r["released"] > three_activations, f"by default every step faults its activations in again: {r}"
    assert r["kept"] < r["released"] / 5, r
    assert r["after"] > max(three_activations, 4 * r["kept"]), f"glibc's defaults are back after the context: {r}"


def test_disabled_changes_nothing():
    with keep_freed_memory(enabled=False) as active:
        assert not active
