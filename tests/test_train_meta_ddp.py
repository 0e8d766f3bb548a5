"""Meta-training under torchrun: 2 CPU processes (gloo), each with its own zoo networks, end a step in agreement."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(__file__))
from test_zoo import tiny_zoo  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent("""
    import sys
    import torch, torch.distributed as dist
    from metaprune.data import get_data
    from metaprune.io import save_tensors
    from metaprune.metatrain.loop import dist_info, meta_train, prepare
    from metaprune.zoo import load_zoo

    out = sys.argv[2]
    dist.init_process_group("gloo")
    rank, world = dist_info()
    zoo, data = load_zoo(sys.argv[1]), get_data("digits")
    res = meta_train(zoo, data, {"hidden": 8, "layers": 1}, {"steps": 2, "nets_per_step": 1, "batch_size": 32,
                     "warmup_steps": 0, "val_every": 0, "lr": 1e-2}, out + "/m", device="cpu", progress=False)
    names = zoo.names("train")[rank::world]
    save_tensors(res["metanet"].state_dict(), f"{out}/rank{rank}.safetensors", metadata={"nets": ",".join(names)})
    dist.destroy_process_group()
""")


@pytest.mark.slow  # ~40 s: two fresh processes import torch and torch-geometric
def test_ddp_ranks_agree_after_a_step(tmp_path):
    zoo = tiny_zoo()
    (tmp_path / "run.py").write_text(SCRIPT)
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node=2", str(tmp_path / "run.py"),
                        str(zoo.root), str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = load_file(str(tmp_path / "rank0.safetensors")), load_file(str(tmp_path / "rank1.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "metanetwork weights differ across ranks"
    assert any(a[k].abs().sum() > 0 for k in a if "dec" in k)  # the step changed the (zero-initialised) decoders
    assert (tmp_path / "m" / "metanet.safetensors").exists()  # rank 0 saved it
