"""Issue 36 (4): opt-in sticky noise, the noise of an input derived from a client-held key and its bytes.

Real parts: NoiseTransforms, a ``veil.protect``-ed conv net, the shipped FaceBoxes transform with its
real head (needs ../shared's weights), the ``veil`` CLI in-process. Releases go nowhere: a protected
client's requests are answered by the real tail on this machine after the wire checks the server makes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import veil
from veil.cli.main import app
from veil.client import VeilClient
from veil.errors import InputError, ServingError, VeilError
from veil.noise import NoiseTransform
from veil.serve.spec import check_wire
from veil.sticky import KEY_BYTES, load_key, new_key, sticky_eps, sticky_seeds, write_key

URL = "127.0.0.1:9"  # a closed port: nothing here connects


def _x(n: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 8, 6, 6, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def protected(tmp_path_factory: pytest.TempPathFactory) -> veil.Protected:
    """A protected conv net as a client holds it: saved, then ``veil.load``-ed around its model."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 3, padding=1), nn.Flatten()
    )
    p = veil.protect(model, split="1", alpha=0.2, example=torch.randn(2, 3, 12, 12))
    return veil.load(p.save(tmp_path_factory.mktemp("sticky") / "t"), model)


# -- seeds ------------------------------------------------------------------------------------------------
def test_seeds_depend_on_key_and_every_byte_only() -> None:
    key, other = new_key(), new_key()
    assert len(key) == KEY_BYTES and key != other
    x = _x()
    seeds = sticky_seeds(key, x)
    assert seeds == sticky_seeds(key, x.clone()) and len(set(seeds)) == 4
    assert all(0 <= s < 2**63 for s in seeds)
    assert set(sticky_seeds(other, x)).isdisjoint(seeds)
    flipped = x.clone()
    flipped.view(torch.int32)[2, 3, 1, 4] ^= 1  # one bit of one element of sample 2
    changed = sticky_seeds(key, flipped)
    assert changed[:2] == seeds[:2] and changed[3] == seeds[3] and changed[2] != seeds[2]
    # dtype and shape are hashed too: the same bytes read as another shape are another input
    assert sticky_seeds(key, x.reshape(4, 8, 36))[0] != seeds[0]
    # a non-contiguous view hashes as its contiguous copy
    t = x.transpose(2, 3)
    assert sticky_seeds(key, t) == sticky_seeds(key, t.contiguous())


def test_a_samples_seed_and_noise_do_not_depend_on_its_batch() -> None:
    key, x = new_key(), _x(5)
    seeds = sticky_seeds(key, x)
    assert [sticky_seeds(key, x[i : i + 1])[0] for i in range(5)] == seeds
    noise = NoiseTransform((8, 6, 6), smax=2.0, granularity="channel")
    together = noise(x, seeds=seeds)
    for i in range(5):
        alone = noise(x[i : i + 1], seeds=seeds[i : i + 1])
        assert torch.equal(alone[0], together[i])
    reordered = noise(x.flip(0), seeds=sticky_seeds(key, x.flip(0)))
    assert torch.equal(reordered.flip(0), together)


def test_sticky_noise_repeats_and_is_standard_normal() -> None:
    key, x = new_key(), _x(3)
    noise = NoiseTransform((8, 6, 6), smax=2.0, granularity="element")
    seeds = sticky_seeds(key, x)
    first, second = noise(x, seeds=seeds), noise(x, seeds=seeds)
    assert torch.equal(first, second)
    fresh = noise(x), noise(x)
    assert not torch.equal(fresh[0], fresh[1]) and not torch.equal(fresh[0], first)
    sigma = noise.sigma().detach()
    eps = sticky_eps((8, 6, 6), seeds, x.dtype, "cpu")
    assert torch.allclose((first - x - noise.mu.detach()) / sigma, eps, atol=1e-5)
    eps = sticky_eps((200_000,), [7, 8], torch.float64, "cpu")
    for row in eps:  # moments of N(0, 1) within a few standard errors
        assert abs(float(row.mean())) < 0.01 and abs(float(row.std()) - 1.0) < 0.01
        assert abs(float((row**4).mean()) - 3.0) < 0.06
    r = float(torch.corrcoef(eps)[0, 1])
    assert abs(r) < 0.01  # neighbouring seeds: unrelated streams


def test_why_seeds_are_not_fed_to_torchs_cpu_generator() -> None:
    # torch's CPU generator keeps only 32 bits of a seed: 5 and 5 + 2^32 give the same noise ...
    a = torch.randn(64, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, torch.randn(64, generator=torch.Generator().manual_seed(5 + 2**32)))
    # ... the sticky stream uses all 63 bits
    assert not torch.equal(*sticky_eps((64,), [5, 5 + 2**32], torch.float32, "cpu"))


def test_without_seeds_the_fresh_path_is_unchanged() -> None:
    x = _x(2)
    for granularity in ("element", "channel"):
        noise = NoiseTransform((8, 6, 6), smax=2.0, granularity=granularity, seed=11).eval()
        with torch.no_grad():
            noise.mu.normal_()
            noise.keep[..., 0] = False
            out = noise(x)
            eps = torch.randn(x.shape, generator=torch.Generator().manual_seed(11))
            want = torch.addcmul(noise.mu, eps, noise.sigma()).add_(x)
            want = torch.where(noise.keep, want, noise.mu.expand_as(want))
        assert torch.equal(out, want)


def test_bad_seeds_are_refused_in_one_line() -> None:
    noise = NoiseTransform((8, 6, 6), granularity="channel")
    with pytest.raises(InputError, match="3 sticky seeds for a batch of 4: give one per sample"):
        noise(_x(), seeds=[1, 2, 3])
    with pytest.raises(InputError, match=r"integers in \[0, 2\^63\)"):
        noise(_x(1), seeds=[-1])
    with pytest.raises(InputError, match="at least 32 bytes, this one has 5"):
        sticky_seeds(b"short", _x())
    with pytest.raises(InputError, match="is bytes"):
        sticky_seeds("a key as text", _x())  # type: ignore[arg-type]


# -- key files -------------------------------------------------------------------------------------------
def test_key_files(tmp_path: Path) -> None:
    path = tmp_path / "client.key"
    key = write_key(path)
    assert load_key(path) == key == path.read_bytes() and len(key) == 32
    assert (path.stat().st_mode & 0o777) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["client.key"]  # no temporary file left
    with pytest.raises(InputError, match="exists: refusing to overwrite"):
        write_key(path)
    assert load_key(path) == key
    with pytest.raises(InputError, match="not found: make one with `veil keygen --out"):
        load_key(tmp_path / "missing.key")
    short = tmp_path / "short.key"
    short.write_bytes(b"x" * 31)
    short.chmod(0o600)
    with pytest.raises(InputError, match="holds 31 bytes, a key needs at least 32"):
        load_key(short)
    if os.name == "posix":
        path.chmod(0o644)
        with pytest.raises(InputError, match=r"readable by others \(mode 644\): run `chmod 600"):
            load_key(path)
    with pytest.raises(InputError, match="does not exist"):
        write_key(tmp_path / "nowhere" / "k")


def test_cli_keygen_and_sticky_key_option(tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "k"
    result = runner.invoke(app, ["keygen", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert len(load_key(out)) == 32 and "mode 600" in result.output
    again = runner.invoke(app, ["keygen", "--out", str(out)])
    assert again.exit_code != 0 and "refusing to overwrite" in str(again.exception or again.output)
    for command in (["detect", "x.jpg"], ["eval", "--model", "mask-compliance"]):
        res = runner.invoke(app, [*command, "--sticky-key", str(out)])
        assert res.exit_code != 0
        assert isinstance(res.exception, VeilError) and "add --server" in str(res.exception)
    for name in ("detect", "eval"):
        assert "--sticky-key" in runner.invoke(app, [name, "--help"]).output


# -- Protected.release and VeilClient ---------------------------------------------------------------------
def test_protected_release_honours_the_key(protected: veil.Protected) -> None:
    key = new_key()
    x = torch.randn(3, 3, 12, 12, generator=torch.Generator().manual_seed(2))
    a, b = protected.release(x, sticky_key=key), protected.release(x, sticky_key=key)
    assert torch.equal(a, b)
    assert not torch.equal(a, protected.release(x, sticky_key=new_key()))
    assert not torch.equal(protected.release(x), protected.release(x))
    alone = protected.release(x[1:2], sticky_key=key)
    assert torch.allclose(alone[0], a[1], atol=1e-6)  # the head may round differently per batch size
    with pytest.raises(InputError, match="at least 32 bytes"):
        protected.release(x, sticky_key=b"0" * 16)


def test_protected_client_sends_the_sticky_release(protected: veil.Protected, tmp_path: Path) -> None:
    key_file = tmp_path / "k"
    key = write_key(key_file)
    sent: list[np.ndarray] = []

    def tail_here(client: VeilClient) -> Any:
        def send(wire: np.ndarray) -> list[np.ndarray]:
            check_wire(wire, client.spec.input, client.max_batch_size)  # what the server checks
            sent.append(wire.copy())
            return [protected.tail(torch.from_numpy(wire)).numpy()]

        return send

    x = torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(4))
    for sticky in (key_file, key):
        client = VeilClient(URL, transform=protected, sticky_key=sticky)
        client._send = tail_here(client)  # type: ignore[method-assign]
        out = client.infer(x)
        assert torch.allclose(out, protected.tail(protected.release(x, sticky_key=key)), atol=1e-6)
    fresh = VeilClient(URL, transform=protected)
    fresh._send = tail_here(fresh)  # type: ignore[method-assign]
    fresh.infer(x)
    assert np.array_equal(sent[0], sent[1]) and not np.array_equal(sent[0], sent[2])
    with pytest.raises(ServingError, match="sticky_key needs a noise transform"):
        VeilClient(URL, head=nn.Identity(), allow_clean=True, sticky_key=key)
    with pytest.raises(InputError, match="readable by others"):
        key_file.chmod(0o640)
        VeilClient(URL, transform=protected, sticky_key=key_file)


def test_faceboxes_client_release_is_sticky(weights: Path) -> None:
    from veil.faceboxes.shipped import SHIPPED_DIR

    gen = torch.Generator().manual_seed(0)
    images = [torch.randint(0, 255, (3, 96, 128), dtype=torch.uint8, generator=gen) for _ in range(2)]
    key = new_key()
    transform = SHIPPED_DIR / "faceboxes-inception3-alpha0.12"
    client = VeilClient(URL, transform=transform, weights=weights, sticky_key=key)
    both, batch = client.release(images)
    alone, _ = client.release(images[1:])
    assert torch.allclose(alone[0], both[1], atol=1e-4)
    noise, head = client.noise, client.head
    assert isinstance(noise, NoiseTransform) and head is not None
    with torch.inference_mode():  # the batch is an inference tensor, as release() made it
        want = noise(head(batch.tensor), seeds=sticky_seeds(key, batch.tensor))
    assert torch.equal(both, want)
    check_wire(both.numpy(), client.spec.input)  # the server's check passes
    plain = VeilClient(URL, transform=transform, weights=weights)
    assert not torch.equal(plain.release(images)[0], plain.release(images)[0])
