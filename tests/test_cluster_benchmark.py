"""The cluster mode of the benchmark runs end to end at a tiny size and loses nothing acknowledged."""
import pytest

from benchmarks import cluster as bench
from support.cluster import needs_cluster_support

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def test_cluster_benchmark_runs_every_setup(capsys):
    needs_cluster_support()
    assert bench.main(["--repeats", "1", "--seconds", "0.3", "--pushers", "3"]) == 0
    table = capsys.readouterr().out
    for name, *_ in bench.CONFIGURATIONS:
        assert f"| {name} |" in table
