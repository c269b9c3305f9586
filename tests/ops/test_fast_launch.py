"""``subq.ops.common.launch.FastLaunch``: the JIT path once per specialization, then the compiled
kernel with every parameter in signature order. A stand-in kernel records which path each call took
(the real kernels are checked on the GPU by their ops' tests, which call them repeatedly)."""

from __future__ import annotations

import pytest
import torch

from subq.ops.common.launch import FastLaunch


class CompiledKernel:  # the name FastLaunch recognises
    def __init__(self, log):
        self.log = log
        self.run = object()

    def __getitem__(self, grid):
        def runner(*args):
            grid[0], grid[1], grid[2]  # as Triton's launcher: three sizes, however the grid was written
            self.log.append(("compiled", grid, args))

        return runner


class StandIn:
    def __init__(self):
        self.log = []

        def fn(x, y, n, BLOCK, FLAG=False):
            pass

        self.fn = fn

    def __getitem__(self, grid):
        def jit(*args, **meta):
            self.log.append(("jit", grid, args, meta))
            return CompiledKernel(self.log)

        return jit


def test_jit_once_per_specialization_then_compiled_in_signature_order():
    k = StandIn()
    launch = FastLaunch(k)
    x = torch.zeros(64)
    y = torch.zeros(64)
    launch[(4,)](x, y, 32, BLOCK=16, num_warps=4)
    launch[(4,)](x, y, 48, BLOCK=16, num_warps=4)  # 48 is a multiple of 16 like 32: same kernel
    assert [e[0] for e in k.log] == ["jit", "compiled"]
    # the grid padded to three sizes; constexprs and defaults follow the arguments, num_warps does not
    assert k.log[1][1:] == ((4, 1, 1), (x, y, 48, 16, False))
    launch[(4,)](x, y, 33, BLOCK=16, num_warps=4)  # not a multiple of 16
    launch[(4,)](x, y, 32, BLOCK=32, num_warps=4)  # another constexpr value
    launch[(4,)](x, y, 32, BLOCK=16, num_warps=8)  # another launch option
    launch[(4,)](x[1:], y, 32, BLOCK=16, num_warps=4)  # an address off the 16-byte grid
    launch[(4,)](x.half(), y, 32, BLOCK=16, num_warps=4)  # another dtype
    launch[(4,)](x, y, 1, BLOCK=16, num_warps=4)  # the value 1
    assert [e[0] for e in k.log[2:]] == ["jit"] * 6
    launch[(8,)](x, y, 32, BLOCK=16, FLAG=True, num_warps=4)
    launch[(8,)](x, y, 32, BLOCK=16, FLAG=True, num_warps=4)
    assert k.log[-2][0] == "jit" and k.log[-1] == ("compiled", (8, 1, 1), (x, y, 32, 16, True))


def test_missing_parameter_is_an_error():
    k = StandIn()
    with pytest.raises(TypeError, match="missing arguments"):
        FastLaunch(k)[(1,)](torch.zeros(4), torch.zeros(4), 3)


def test_interpreter_path_is_never_cached():
    class Interpreted(StandIn):
        def __getitem__(self, grid):
            return lambda *args, **meta: self.log.append(("jit", grid, args, meta))  # returns None

    k = Interpreted()
    launch = FastLaunch(k)
    for _ in range(3):
        launch[(2,)](torch.zeros(4), torch.zeros(4), 16, BLOCK=16)
    assert [e[0] for e in k.log] == ["jit"] * 3


def test_compiled_kernels_are_kept_per_device(monkeypatch):
    """A kernel compiled while device 0 was current is not launched on device 1."""
    device = [0]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: device[0])
    k = StandIn()
    launch = FastLaunch(k)
    x = torch.zeros(16)
    launch[(1,)](x, x, 16, BLOCK=16)
    launch[(1,)](x, x, 16, BLOCK=16)
    device[0] = 1
    launch[(1,)](x, x, 16, BLOCK=16)
    launch[(1,)](x, x, 16, BLOCK=16)
    assert [e[0] for e in k.log] == ["jit", "compiled", "jit", "compiled"]


def test_tensor_passed_by_keyword_is_this_calls_own():
    k = StandIn()
    launch = FastLaunch(k)
    x, y = torch.zeros(64), torch.zeros(64)
    first, second = torch.zeros(16), torch.ones(16)  # same specialization
    launch[(4,)](x, y, 32, BLOCK=16, FLAG=first)
    launch[(4,)](x, y, 32, BLOCK=16, FLAG=second)
    assert [e[0] for e in k.log] == ["jit", "compiled"]
    assert k.log[1][2][-1] is second


def test_keyword_order_is_part_of_the_key():
    k = StandIn()
    launch = FastLaunch(k)
    x, y = torch.zeros(64), torch.zeros(64)
    launch[(4,)](x, y, 32, BLOCK=16, FLAG=True)
    launch[(4,)](x, y, 32, FLAG=True, BLOCK=16)  # another order: compiled once more, same arguments
    launch[(4,)](x, y, 32, FLAG=True, BLOCK=16)
    assert [e[0] for e in k.log] == ["jit", "jit", "compiled"]
    assert k.log[2][2] == (x, y, 32, 16, True)
