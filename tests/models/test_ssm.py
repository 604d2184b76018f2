"""Selective scan backends agree with the reference loop; SelectiveSSM layer behaviour."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mamba_denoiser.models import (
    SelectiveSSM,
    SSMState,
    available_backends,
    resolve_backend,
    selective_scan,
)

NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def make_inputs(
    batch, dim, L, N, groups=1, seed=0, with_D=True, with_z=True, with_bias=True, positive=False
):
    """Random scan inputs; ``positive`` makes Δ + bias > 0, for scans without softplus."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape, scale=1.0):
        x = scale * torch.randn(*shape, generator=g)
        return (x.abs() if positive else x).requires_grad_()

    bc_shape = (batch, N, L) if groups == 1 else (batch, groups, N, L)
    return {
        "u": randn(batch, dim, L),
        "delta": randn(batch, dim, L, scale=0.5),
        "A": (-0.1 - 2 * torch.rand(dim, N, generator=g)).requires_grad_(),
        "B": randn(*bc_shape),
        "C": randn(*bc_shape),
        "D": randn(dim) if with_D else None,
        "z": randn(batch, dim, L) if with_z else None,
        "delta_bias": randn(dim, scale=0.5) if with_bias else None,
    }


def run(backend, inputs, delta_softplus=True, seed=1):
    """Output and gradients of every input for a fixed random cotangent."""
    for x in inputs.values():
        if x is not None:
            x.grad = None
    out = selective_scan(**inputs, delta_softplus=delta_softplus, backend=backend)
    cot = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed))
    (out * cot).sum().backward()
    grads = {k: v.grad.clone() for k, v in inputs.items() if v is not None}
    return out.detach(), grads


def assert_close(actual, expected, rtol=1e-4, what=""):
    # relative to the largest entry: elementwise rtol is meaningless for values near 0
    scale = expected.abs().max().clamp(min=1e-6)
    err = ((actual - expected).abs().max() / scale).item()
    assert err < rtol, f"{what}: max error {err:.2e} relative to max |value| {scale:.2e}"


CASES = {
    "odd_L": dict(batch=2, dim=6, L=7, N=4),
    "L1": dict(batch=3, dim=4, L=1, N=3),
    "batch1": dict(batch=1, dim=5, L=9, N=2),
    "groups": dict(batch=2, dim=8, L=11, N=4, groups=2),
    "no_optional": dict(batch=2, dim=4, L=6, N=3, with_D=False, with_z=False, with_bias=False),
    "long_L512": dict(batch=2, dim=4, L=512, N=4),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("softplus", [True, False])
def test_fused_matches_reference(case, softplus):
    inputs = make_inputs(**CASES[case], positive=not softplus)
    ref_out, ref_grads = run("reference", inputs, softplus)
    out, grads = run("fused", inputs, softplus)
    assert out.shape == ref_out.shape == inputs["u"].shape
    assert_close(out, ref_out, what="output")
    assert set(grads) == set(ref_grads)
    for name in grads:
        assert_close(grads[name], ref_grads[name], what=f"grad {name}")


def test_fused_no_grad_and_shapes_of_grads():
    inputs = make_inputs(batch=2, dim=4, L=5, N=3, groups=2)
    with torch.no_grad():
        out = selective_scan(**inputs, delta_softplus=True, backend="fused")
        ref = selective_scan(**inputs, delta_softplus=True, backend="reference")
    assert_close(out, ref)
    _, grads = run("fused", inputs)
    for name, g in grads.items():
        assert g.shape == inputs[name].shape, name


def test_fused_trains_after_inference_mode():
    # Lightning validates under torch.inference_mode; the fused scan's reused scratch
    # buffers must still be writable by the next training step.
    from mamba_denoiser.models.scan import release_workspace

    release_workspace()
    inputs = make_inputs(batch=2, dim=4, L=7, N=3)
    with torch.inference_mode():
        selective_scan(**{k: v.detach() for k, v in inputs.items()}, backend="fused")
    out, grads = run("fused", inputs)
    ref, ref_grads = run("reference", inputs)
    assert_close(out, ref)
    for name in grads:
        assert_close(grads[name], ref_grads[name])


def test_fused_saves_no_full_state_tensor():
    # the backward must not keep (batch, L, dim, N) of states: only O(sqrt(L)) of them
    batch, dim, L, N = 2, 32, 256, 16
    full = batch * L * dim * N
    inputs = make_inputs(batch=batch, dim=dim, L=L, N=N)
    out = selective_scan(**inputs, delta_softplus=True, backend="fused")
    node = out.grad_fn
    assert "FusedSelectiveScan" in type(node).__name__
    sizes = [t.numel() for t in node.saved_tensors if t is not None]
    assert max(sizes) <= full / 8  # the state checkpoints: 16 chunks of 16 steps
    assert sum(sizes) < full / 2


def test_autocast_bf16_runs_in_float32():
    inputs = make_inputs(batch=2, dim=4, L=9, N=3)
    ref = selective_scan(**inputs, delta_softplus=True, backend="reference")
    low = {k: (v.detach().bfloat16() if v is not None else None) for k, v in inputs.items()}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = selective_scan(**low, delta_softplus=True, backend="fused")
    assert out.dtype == torch.bfloat16
    assert torch.isfinite(out.float()).all()
    assert_close(out.float(), ref.detach(), rtol=5e-2)  # bf16 inputs, fp32 scan


def test_backend_selection_and_errors():
    assert resolve_backend("auto", "cpu") == "fused"
    assert {"reference", "fused"} <= set(available_backends("cpu"))
    inputs = make_inputs(batch=1, dim=2, L=3, N=2)
    with pytest.raises(ValueError, match="unknown scan backend"):
        selective_scan(**inputs, backend="cuda_magic")
    with pytest.raises(RuntimeError, match="mamba_ssm"):
        selective_scan(**inputs, backend="mamba_ssm")
    if os.environ.get("TRITON_INTERPRET") != "1":
        with pytest.raises(RuntimeError, match="triton"):
            selective_scan(**inputs, backend="triton")
    with pytest.raises(ValueError, match="unknown scan backend"):
        SelectiveSSM(d_model=8, backend="nope")


def test_shape_errors_are_explicit():
    inputs = make_inputs(batch=2, dim=6, L=5, N=3)
    inputs["B"] = torch.randn(6, 3)  # input-independent B is not supported
    with pytest.raises(ValueError, match="B must be"):
        selective_scan(**inputs)
    inputs = make_inputs(batch=2, dim=6, L=5, N=3)
    inputs["B"] = torch.randn(2, 4, 3, 5)
    inputs["C"] = torch.randn(2, 4, 3, 5)
    with pytest.raises(ValueError, match="group count"):
        selective_scan(**inputs)


def test_selective_ssm_shapes_and_init():
    torch.manual_seed(0)
    ssm = SelectiveSSM(d_model=128, d_state=16)
    x = torch.randn(4, 60, 128)
    assert ssm(x).shape == (4, 60, 128)
    # S4D-real: A = -(1..N) in every channel
    expected = -torch.arange(1, 17, dtype=torch.float32).expand(ssm.d_inner, 16)
    assert torch.allclose(ssm.ssm.A, expected)
    dt = F.softplus(ssm.ssm.dt_proj.bias)
    assert dt.min() >= 1e-3 * (1 - 1e-5) and dt.max() <= 1e-1 * (1 + 1e-5)
    assert dt.log().std() > 0.5  # spread log-uniformly, not constant
    assert torch.all(ssm.ssm.D == 1)


def test_selective_ssm_is_causal():
    torch.manual_seed(0)
    ssm = SelectiveSSM(d_model=8, d_state=4)
    x = torch.randn(1, 12, 8, requires_grad=True)
    ssm(x)[0, 5].sum().backward()
    assert x.grad[0, 6:].abs().max() == 0  # nothing after t=5 influences y_5
    assert x.grad[0, :6].abs().max() > 0


@pytest.mark.parametrize("backend", ["reference", "fused"])
@pytest.mark.parametrize("groups", [1, 2])
def test_scan_continues_from_h0(backend, groups):
    # scanning [0, a) then [a, L) from the returned state is the one-pass scan, and the
    # last state is the one a longer scan would carry on from
    inputs = make_inputs(batch=2, dim=6 * groups, L=13, N=3, groups=groups)
    inputs = {k: v.detach() if v is not None else None for k, v in inputs.items()}

    def part(sl, h0=None):
        p = {
            k: (v[..., sl] if k in ("u", "delta", "B", "C", "z") else v) for k, v in inputs.items()
        }
        return selective_scan(
            **p, delta_softplus=True, backend=backend, h0=h0, return_last_state=True
        )

    full, h_full = part(slice(0, 13))
    h = None
    outs = []
    for sl in (slice(0, 4), slice(4, 5), slice(5, 13)):
        y, h = part(sl, h)
        outs.append(y)
    assert h.shape == (2, 6 * groups, 3) and h.dtype == torch.float32
    assert_close(torch.cat(outs, -1), full, rtol=1e-5, what="chunked output")
    assert_close(h, h_full, rtol=1e-5, what="last state")
    # and the one-pass output is the scan without state passing
    assert_close(full, selective_scan(**inputs, delta_softplus=True, backend=backend), rtol=1e-6)


def test_fused_h0_matches_reference_with_gradients():
    # a non-zero h0 changes the output, the last state and every gradient; fused must
    # agree with the reference on all of them (h0 itself being a constant)
    inputs = make_inputs(batch=2, dim=8, L=11, N=4, groups=2)
    h0 = torch.randn(2, 8, 4, generator=torch.Generator().manual_seed(3))
    results = {}
    for backend in ("reference", "fused"):
        for x in inputs.values():
            if x is not None:
                x.grad = None
        out, last = selective_scan(
            **inputs, delta_softplus=True, backend=backend, h0=h0, return_last_state=True
        )
        (out * torch.linspace(-1, 1, out.numel()).reshape(out.shape)).sum().backward()
        grads = {k: v.grad.clone() for k, v in inputs.items() if v is not None}
        results[backend] = (out.detach(), last.detach(), grads)
    (o_ref, h_ref, g_ref), (o, h, g) = results["reference"], results["fused"]
    zero_start = selective_scan(**inputs, delta_softplus=True, backend="reference")
    assert not torch.allclose(o_ref, zero_start.detach(), atol=1e-3)  # h0 matters
    assert_close(o, o_ref, what="output")
    assert_close(h, h_ref, what="last state")
    for name in g_ref:
        assert_close(g[name], g_ref[name], what=f"grad {name}")


def test_state_passing_errors():
    inputs = make_inputs(batch=2, dim=4, L=5, N=3)
    with pytest.raises(ValueError, match="h0 must be"):
        selective_scan(**inputs, backend="fused", h0=torch.zeros(2, 4, 2))
    h0 = torch.zeros(2, 4, 3, requires_grad=True)
    with pytest.raises(ValueError, match="constant"):
        selective_scan(**inputs, backend="fused", h0=h0)


def assert_streams_like_one_pass(module, x, chunks=(5, 1, 17), atol=1e-5, **kw):
    """module(x) == the outputs of module on `chunks` of x, each given the last state."""
    assert sum(chunks) == x.shape[1]
    with torch.no_grad():
        full = module(x, **kw)
        outs, state, t0 = [], None, 0
        for n in chunks:
            y, state = module(x[:, t0 : t0 + n], state=state, return_state=True, **kw)
            outs.append(y)
            t0 += n
    torch.testing.assert_close(torch.cat(outs, dim=1), full, rtol=0, atol=atol)
    return state


@pytest.mark.parametrize("backend", ["reference", "fused"])
def test_selective_ssm_streams_in_chunks(backend):
    torch.manual_seed(0)
    ssm = SelectiveSSM(d_model=16, d_state=4, backend=backend)
    x = torch.randn(2, 23, 16)
    # a chunk of 1 row is shorter than the conv's d_conv - 1 = 3 rows of state
    state = assert_streams_like_one_pass(ssm, x)
    assert isinstance(state, SSMState)
    assert state.conv.shape == (2, ssm.d_inner, 3) and state.ssm.shape == (2, ssm.d_inner, 4)
    assert state.ssm.dtype == torch.float32
    with torch.no_grad():  # the conv state is the last d_conv - 1 inputs of the conv
        conv_in = ssm.in_proj(x).chunk(2, dim=-1)[0]
    torch.testing.assert_close(state.conv, conv_in[:, -3:].transpose(1, 2))
    # return_state without a state is the zero state; a zero state is state=None
    with torch.no_grad():
        y0, _ = ssm(x, return_state=True)
        y1 = ssm(x, state=ssm.initial_state(2))
    torch.testing.assert_close(y0, ssm(x).detach(), rtol=0, atol=1e-6)
    torch.testing.assert_close(y1, y0, rtol=0, atol=0)


def test_selective_ssm_streaming_falls_back_to_fused():
    # a module built for a GPU kernel still streams: state passing runs on `fused`
    torch.manual_seed(0)
    ssm = SelectiveSSM(d_model=8, d_state=4, backend="triton")
    x = torch.randn(1, 9, 8)
    with torch.no_grad():
        y, _ = ssm(x[:, :4], return_state=True)
        ssm.backend = "fused"
        ref = ssm(x[:, :4])
    torch.testing.assert_close(y, ref)


def assert_module_backend_parity(module, x, backend):
    """Output, input grad and every parameter grad agree between `reference` and `backend`."""
    results = {}
    for name in ("reference", backend):
        for m in module.modules():
            if hasattr(m, "backend"):
                m.backend = name
        module.zero_grad()
        x.grad = None
        out = module(x)
        (out * torch.linspace(-1, 1, out.numel()).reshape(out.shape)).sum().backward()
        grads = {n: p.grad.clone() for n, p in module.named_parameters()}
        results[name] = (out.detach(), x.grad.clone(), grads)
    (o_ref, gx_ref, g_ref), (o, gx, g) = results["reference"], results[backend]
    assert_close(o, o_ref, what="output")
    assert_close(gx, gx_ref, what="grad x")
    assert set(g) == set(g_ref)
    for name in g_ref:
        assert_close(g[name], g_ref[name], what=f"grad {name}")


@pytest.mark.parametrize("L", [1, 13])
def test_selective_ssm_module_backend_parity(L):
    torch.manual_seed(0)
    ssm = SelectiveSSM(d_model=16, d_state=8)
    assert_module_backend_parity(ssm, torch.randn(2, L, 16, requires_grad=True), "fused")


TRITON_SCRIPT = textwrap.dedent(
    """
    import os, sys
    assert os.environ["TRITON_INTERPRET"] == "1"
    sys.path.insert(0, {tests!r})
    import torch
    from test_ssm import CASES, assert_close, assert_module_backend_parity, make_inputs, run
    from mamba_denoiser.models import BiMambaBlock, SelectiveSSM, selective_scan

    cases = dict(
        CASES,
        long_L512=dict(batch=1, dim=2, L=512, N=2),  # the interpreter runs ~40 ms per step
        partial_chunk=dict(batch=1, dim=3, L=70, N=2),  # 8 chunks of 9, the last one of 7
        masked_blocks=dict(batch=2, dim=40, L=5, N=5, groups=2),  # channel/state masks
    )
    for name in sys.argv[1].split(","):
        if name == "state":  # the kernel starts from h = 0: an explicit request must say so
            inputs = make_inputs(batch=1, dim=4, L=5, N=2)
            try:
                selective_scan(**inputs, backend="triton", h0=torch.zeros(1, 4, 2))
            except ValueError as err:
                assert "cannot take or return the state" in str(err)
            else:
                raise AssertionError("triton accepted h0")
            continue
        if name == "modules":  # whole layers: the triton path through (b, l, d) views
            torch.manual_seed(0)
            x = torch.randn(2, 7, 6, requires_grad=True)
            assert_module_backend_parity(SelectiveSSM(d_model=6, d_state=3), x, "triton")
            assert_module_backend_parity(BiMambaBlock(d_model=6, d_state=3), x, "triton")
            continue
        for softplus in (True, False):
            inputs = make_inputs(**cases[name], positive=not softplus)
            ref_out, ref_grads = run("reference", inputs, softplus)
            out, grads = run("triton", inputs, softplus)
            assert_close(out, ref_out, what=name + " output")
            assert set(grads) == set(ref_grads)
            for k in ref_grads:
                assert_close(grads[k], ref_grads[k], what=name + " grad " + k)
    print("TRITON_INTERPRETER_PARITY_OK", sys.argv[1])
    """
)


def run_triton_interpreter(tmp_path, cases):
    pytest.importorskip("triton")
    script = tmp_path / "triton_parity.py"
    script.write_text(TRITON_SCRIPT.format(tests=str(Path(__file__).parent)))
    # TRITON_INTERPRET must be set before triton is first imported, hence a fresh process
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run(
        [sys.executable, str(script), ",".join(cases)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "TRITON_INTERPRETER_PARITY_OK" in proc.stdout


@pytest.mark.e2e
def test_triton_kernel_matches_reference_in_interpreter(tmp_path):
    cases = ["odd_L", "L1", "batch1", "groups", "no_optional", "partial_chunk", "masked_blocks"]
    cases += ["modules", "state"]
    run_triton_interpreter(tmp_path, cases)


@pytest.mark.e2e
@pytest.mark.slow
def test_triton_kernel_matches_reference_long_sequence(tmp_path):
    run_triton_interpreter(tmp_path, ["long_L512"])
