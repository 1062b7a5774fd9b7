"""Row hashes computed where the rows are: a constant number of tensor operations per argument.

A sample's content key is a 128-bit hash of its rows. Hashing on the host cost a copy of
every batch to the host (on a GPU, a synchronisation per call) and SHA-256 at ~1.5 GB/s,
more than a whole ideal step for an image batch on a fast card. Here a row is read as
integer words ``w_j`` (its bytes, viewed as int32 / int16 / uint8 by element size) and
hashed by two independent multilinear sums over the integers modulo 2**64::

    h(row) = (sum_j w_j * a_j, sum_j w_j * b_j)   (mod 2**64)

with ``a_j, b_j`` drawn once per process from the operating system's randomness, per
(argument, dtype, row shape, row length). That is four tensor operations per argument
-- a dtype view, a reshape, one multiply, one sum -- whatever the batch size, on the
device that holds the rows, and integer arithmetic is exact, so a row gets the same hash
in any batch (floating-point projections differ in their last bits with the batch size).

Why its collisions are not a concern: the family is universal. For two different rows,
take a word where they differ with the fewest trailing zero bits, ``v <= 31`` (words are
at most 32 bits wide); whatever the other multipliers, at most ``2**v`` of the ``2**64``
values of that word's multiplier make one sum collide, so one sum collides with
probability at most ``2**-33`` and both, drawn independently, at most ``2**-66`` -- for
*any* pair of inputs, since the multipliers are secret to the process and never depend
on the data. Over a dataset of ``N`` distinct samples a collision somewhere has
probability at most ``N**2 * 2**-67``: 7e-7 for ten million samples. In practice (a
difference with few trailing zeros) it is near ``2**-128``.

Host-side keys (``numpy.uint64`` pairs) are combined with :func:`mix`, a bijective
scramble of both lanes, and keyed by :func:`lanes` of a BLAKE2b digest of what every
sample of a call shares.
"""

from __future__ import annotations

import ctypes
import hashlib
import os

import numpy as np
import torch

__all__ = ["hash_rows", "host_bytes", "host_u64", "lanes", "mix"]

_SECRET = os.urandom(16)  # keys live in one process only: the stores are not persistent
_VIEWS = {1: torch.uint8, 2: torch.int16, 4: torch.int32}
_TABLES: dict[tuple[int, torch.device, bytes], torch.Tensor] = {}
_TABLES_KEPT = 64  # distinct (argument layout, device) pairs kept; a model has a handful
_CPU_CHUNK = 4 << 20  # bytes of int64 product per step of a CPU hash
_ODD = (np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB))


def _multipliers(words: int, device: torch.device, salt: bytes) -> torch.Tensor:
    """``(2, words)`` random int64 multipliers for this layout, made once (a copy to ``device`` then)."""
    key = (words, device, salt)
    found = _TABLES.get(key)
    if found is None:
        seed = hashlib.blake2b(_SECRET + salt + words.to_bytes(8, "little"), digest_size=8).digest()
        generator = torch.Generator().manual_seed(int.from_bytes(seed, "little") >> 1)  # never the default one
        with torch.inference_mode(False), torch.no_grad():
            table = torch.randint(-(2**63), 2**63 - 1, (2, words), generator=generator, dtype=torch.int64)
            found = table.to(device)
        if len(_TABLES) >= _TABLES_KEPT:
            del _TABLES[next(iter(_TABLES))]
        _TABLES[key] = found
    return found


def hash_rows(tensor: torch.Tensor, rows: int, salt: bytes) -> torch.Tensor:
    """``(rows, 2)`` int64 hash of each row (dimension 0) of ``tensor``, on its device.

    ``salt`` names the argument (its position or keyword, dtype and row shape), so that the
    same bytes in another argument, dtype or shape hash differently. Conjugate and negative
    views (``z.conj()``) are resolved first: their bit-level view is refused by torch.
    """
    t = tensor
    if t.is_conj():
        t = t.resolve_conj()
    if t.is_neg():
        t = t.resolve_neg()
    if t.is_complex():
        t = torch.view_as_real(t)
    view = _VIEWS.get(t.element_size())
    # A same-size view accepts any strides; wider elements are split into int32 words.
    t = t.view(view) if view is not None else t.contiguous().view(torch.int32)
    words = t.numel() // rows if rows else 0
    # (rows, 1, words) x (2, words), summed over the contiguous last dimension: 2.4x faster on a CPU
    # than summing over a middle one (measured 0.15 ms for 32 images of 32x32, SHA-256 took 0.24 ms).
    flat = t.reshape(rows, 1, words)
    table = _multipliers(words, t.device, salt)
    step = max(1, _CPU_CHUNK // max(16 * words, 1)) if t.device.type == "cpu" else rows
    if step >= rows:
        return (flat * table).sum(-1)
    # On a CPU, a large batch's (rows, 2, words) int64 product would not stay in cache: a few rows at a time
    # (on a GPU the one product is the fastest way).
    return torch.cat([(flat[i : i + step] * table).sum(-1) for i in range(0, rows, step)])


def host_u64(tensor: torch.Tensor) -> np.ndarray:
    """An int64 tensor's values as a uint64 numpy array: a copy to the host for a device tensor, then raw memory.

    Read through the pointer, not ``Tensor.numpy()``: that dispatches a ``detach`` of its own
    at every call, an operation the cache need not add.
    """
    if tensor.device.type != "cpu":
        tensor = tensor.cpu()  # the one small copy to the host of a content-keyed call
    tensor = tensor if tensor.is_contiguous() else tensor.contiguous()
    count = tensor.numel()
    if not count:
        return np.zeros(tuple(tensor.shape), np.uint64)
    memory = (ctypes.c_uint64 * count).from_address(tensor.data_ptr())
    return np.frombuffer(memoryview(memory).cast("B"), dtype=np.uint64, count=count).reshape(tuple(tensor.shape)).copy()


def host_bytes(tensor: torch.Tensor) -> bytes:
    """A CPU tensor's bytes (a generator's state), read through its pointer (no operation dispatched)."""
    return ctypes.string_at(tensor.data_ptr(), tensor.numel() * tensor.element_size())


def lanes(digest: bytes) -> np.ndarray:
    """The first 16 bytes of ``digest`` as two uint64 lanes (a context to combine with row hashes)."""
    return np.frombuffer(digest[:16], dtype=np.uint64).copy()


def mix(rows: np.ndarray, key: np.ndarray) -> np.ndarray:
    """Scramble ``(n, 2)`` uint64 ``rows`` with the lanes ``key``: a bijection of the 128 bits for each key.

    Used where host-side keys are combined (a derived key of a chained part's output, an
    argument's contribution): xor with the key, then two multiply-xorshift rounds that
    carry each lane into the other. Invertible, so distinct inputs stay distinct.
    """
    a = rows[:, 0] ^ key[0]
    b = rows[:, 1] ^ key[1]
    with np.errstate(over="ignore"):
        a = a * _ODD[0]
        b = (b ^ (a >> np.uint64(29))) * _ODD[1]
        a = (a ^ (b >> np.uint64(31))) * _ODD[2]
        b = b ^ (a >> np.uint64(32))
    return np.stack([a, b], axis=1)
