"""The compiled dense-CRF kernel (seglab/crf/native.py, dense_kernel.cpp): against the PyTorch
path and pydensecrf on tiny images, and the fall-back to the PyTorch path without a compiler.

The PyTorch path is the independent reference: it is tested against exact O(N^2) mean field
and pydensecrf in test_crf_dense.py, and shares no code with the kernel.
"""

import pytest
import torch

from seglab.crf import PRESETS, dense_crf, dense_crf_labels, native
from seglab.crf.dense import pixel_features
from seglab.crf.lattice import PermutohedralLattice
from seglab.crf.reference import pydensecrf_labels
from seglab.errors import SeglabError


def _inputs(h: int, w: int, classes: int, seed: int, noise: bool = True):
    """Probabilities (1, K, H, W) and a uint8 image (1, 3, H, W): colour blocks (plus noise)."""
    g = torch.Generator().manual_seed(seed)
    blocks = (torch.rand(3, h // 8 + 1, w // 8 + 1, generator=g) * 255).repeat_interleave(8, 1)
    image = blocks.repeat_interleave(8, 2)[:, :h, :w]
    if noise:
        image = image + 30 * torch.randn(3, h, w, generator=g)
    image = image.clamp(0, 255).round().to(torch.uint8)
    probabilities = torch.softmax(1.5 * torch.randn(classes, h, w, generator=g), 0)
    return probabilities[None], image[None]


@pytest.fixture
def kernel():
    if not native.available():
        pytest.skip("no C++ compiler here: the native kernel cannot be built")


def _close_pixels(a: torch.Tensor, b: torch.Tensor, atol: float = 1e-4) -> float:
    """Share of pixels whose K marginals all agree within atol."""
    return float(((a - b).abs().amax(1) < atol).float().mean())


# 3 and 5 classes pad to 8 lanes, 21 to 24, 26 runs the generic (runtime-width) version.
@pytest.mark.parametrize("classes", [3, 5, 21, 26])
@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_kernel_matches_the_pytorch_path(kernel, classes, preset):
    probabilities, image = _inputs(24, 30, classes, seed=classes)
    reference = dense_crf(probabilities, image, preset, backend="torch", vertex_dtype=torch.float32)
    q = dense_crf(probabilities, image, preset, backend="native")
    # The same float32 arithmetic in another order: a point on a simplex boundary may round
    # into the neighbouring simplex in one and not the other (see test_crf_dense.py).
    assert _close_pixels(q, reference) >= 0.99
    assert (q - reference).abs().mean() < 1e-5
    assert (q.argmax(1) == reference.argmax(1)).float().mean() >= 0.99
    assert torch.allclose(q.sum(1), torch.ones(1, 24, 30), atol=1e-5)


def test_logits_and_compatibility_match_the_pytorch_path(kernel):
    g = torch.Generator().manual_seed(3)
    logits = 3 * torch.randn(2, 4, 16, 20, generator=g)
    images = torch.randint(0, 256, (2, 3, 16, 20), generator=g, dtype=torch.uint8)
    mu = 1.0 - torch.eye(4)
    mu[0, 1] = mu[1, 0] = 0.25
    for compatibility in (None, mu):
        options = {"logits": True, "compatibility": compatibility, "preset": "pydensecrf"}
        reference = dense_crf(
            logits, images, backend="torch", vertex_dtype=torch.float32, **options
        )
        q = dense_crf(logits, images, backend="native", **options)
        assert _close_pixels(q, reference) >= 0.99
        assert (q.argmax(1) == reference.argmax(1)).float().mean() >= 0.99


def test_a_lattice_larger_than_the_cache_matches_the_pytorch_path(kernel, monkeypatch):
    # Uniform colour noise: more appearance-lattice vertices than pixels, so many that the
    # kernel renumbers them in code order (dense_kernel.cpp's sort_vertices, above SORT_BYTES
    # = 4 MiB of float32 rows), finds their neighbours by merging sorted codes, and visits the
    # pixels in the order of their simplices (reorder_pixels), writing each back to its place.
    g = torch.Generator().manual_seed(7)
    h, w, classes = 180, 240, 21
    image = torch.randint(0, 256, (1, 3, h, w), generator=g, dtype=torch.uint8)
    probabilities = torch.softmax(1.5 * torch.randn(1, classes, h, w, generator=g), 1)
    params = PRESETS["pydensecrf"]
    features = pixel_features(image[0], params.theta_alpha, params.theta_beta)
    vertices = PermutohedralLattice.build(features).num_vertices
    assert vertices * 24 * 4 > 4 * 2**20  # 21 classes pad to 24 float32 lanes
    monkeypatch.setenv("SEGLAB_CRF_FLOAT32", "1")  # float32 rows, as the reference's
    reference = dense_crf(probabilities, image, params, backend="torch", vertex_dtype=torch.float32)
    for threads in (1, 2):
        q = dense_crf(probabilities, image, params, backend="native", threads=threads)
        assert _close_pixels(q, reference) >= 0.99
        assert (q - reference).abs().mean() < 1e-5
        assert (q.argmax(1) == reference.argmax(1)).float().mean() >= 0.99
        # Labels written by the last pass to each pixel's place in the image.
        labels = dense_crf_labels(probabilities, image, params, backend="native", threads=threads)
        assert torch.equal(labels, q.argmax(1))


def test_threads_do_not_change_the_result(kernel):
    probabilities, image = _inputs(80, 120, 6, seed=4)  # 9600 pixels: two threads' share
    one = dense_crf(probabilities, image, "pydensecrf", backend="native", threads=1)
    two = dense_crf(probabilities, image, "pydensecrf", backend="native", threads=2)
    # Only the order of the two threads' splat sums differs.
    assert (one - two).abs().max() < 1e-5


def test_no_iterations_or_no_kernels_give_the_normalised_probabilities(kernel):
    # By hand: Q0 = softmax(-unary) = p / sum(p) with p clipped at 1e-5.
    probabilities, image = _inputs(10, 12, 3, seed=5)
    probabilities[0, 0, 0, 0], probabilities[0, 1, 0, 0], probabilities[0, 2, 0, 0] = 0.0, 0.5, 0.5
    expected = probabilities.clamp(min=1e-5)
    expected = expected / expected.sum(1, keepdim=True)
    for options in ({"iterations": 0}, {"w1": 0, "w2": 0}):
        q = dense_crf(probabilities, image, "pydensecrf", backend="native", **options)
        assert torch.allclose(q, expected, atol=1e-6)
        labels = dense_crf_labels(probabilities, image, "pydensecrf", backend="native", **options)
        assert labels[0, 0, 0] == 1  # classes 1 and 2 tie there: the first, as argmax
        assert torch.equal(labels, expected.argmax(1))


@pytest.mark.parametrize("backend", ["native", "torch"])
def test_labels_are_the_argmax_of_the_marginals(backend):
    if backend == "native" and not native.available():
        pytest.skip("no C++ compiler here: the native kernel cannot be built")
    probabilities, image = _inputs(40, 56, 7, seed=8)
    for threads in (1, 2):
        options = {"preset": "pydensecrf", "backend": backend, "threads": threads}
        labels = dense_crf_labels(probabilities, image, **options)
        assert labels.dtype == torch.int64 and labels.shape == (1, 40, 56)
        assert torch.equal(labels, dense_crf(probabilities, image, **options).argmax(1))


def test_kernel_agrees_with_pydensecrf(kernel):
    pytest.importorskip("pydensecrf.densecrf", reason="pydensecrf2 is not installed")
    probabilities, image = _inputs(90, 120, 21, seed=6)
    params = PRESETS["pydensecrf"]
    reference = pydensecrf_labels(probabilities[0], image[0], params)
    q = dense_crf(probabilities, image, params, backend="native")
    assert (q[0].argmax(0).numpy() == reference).mean() >= 0.99


def _fresh_kernel_state(monkeypatch, tmp_path):
    """Forget the loaded kernel and use an empty cache, so the next call builds it again."""
    monkeypatch.setattr(native, "_library", None)
    monkeypatch.setenv("SEGLAB_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("SEGLAB_CRF_BACKEND", raising=False)


def test_without_a_compiler_auto_falls_back_with_one_line(monkeypatch, tmp_path, capsys):
    _fresh_kernel_state(monkeypatch, tmp_path)
    monkeypatch.setattr(native, "compiler", lambda: None)
    probabilities, image = _inputs(12, 16, 3, seed=7)
    q = dense_crf(probabilities, image, "pydensecrf")
    again = dense_crf(probabilities, image, "pydensecrf")
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "no C++ compiler" in lines[0] and "PyTorch path" in lines[0]
    assert torch.equal(q, dense_crf(probabilities, image, "pydensecrf", backend="torch"))
    assert torch.equal(q, again)
    with pytest.raises(SeglabError, match="backend='torch'"):
        dense_crf(probabilities, image, "pydensecrf", backend="native")


def test_a_failing_build_falls_back_with_the_reason(monkeypatch, tmp_path, capsys):
    _fresh_kernel_state(monkeypatch, tmp_path)
    failing = tmp_path / "broken-c++"
    failing.write_text("#!/bin/sh\necho 'error: this compiler is broken' >&2\nexit 1\n")
    failing.chmod(0o755)
    monkeypatch.setenv("CXX", str(failing))
    probabilities, image = _inputs(12, 16, 3, seed=8)
    q = dense_crf(probabilities, image, "pydensecrf")
    err = capsys.readouterr().err
    assert "did not build (error: this compiler is broken)" in err
    assert torch.equal(q, dense_crf(probabilities, image, "pydensecrf", backend="torch"))
    assert not list(tmp_path.glob("*.so"))  # no half-written library left in the cache


def test_environment_forces_the_pytorch_path(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the native kernel ran although SEGLAB_CRF_BACKEND=torch")

    monkeypatch.setattr(native, "run", refuse)
    monkeypatch.setenv("SEGLAB_CRF_BACKEND", "torch")
    probabilities, image = _inputs(12, 16, 3, seed=9)
    q = dense_crf(probabilities, image, "pydensecrf")
    assert q.shape == (1, 3, 12, 16)
    monkeypatch.setenv("SEGLAB_CRF_BACKEND", "fast")
    with pytest.raises(SeglabError, match="SEGLAB_CRF_BACKEND"):
        dense_crf(probabilities, image, "pydensecrf")


def test_half_precision_vertices_take_the_pytorch_path(monkeypatch):
    monkeypatch.setattr(native, "run", lambda *a, **k: pytest.fail("native kernel ran"))
    probabilities, image = _inputs(12, 16, 3, seed=10)
    dense_crf(probabilities, image, "pydensecrf", vertex_dtype=torch.float16)
    with pytest.raises(SeglabError, match="float32 with at most 512 classes"):
        dense_crf(probabilities, image, "pydensecrf", vertex_dtype=torch.float16, backend="native")


def test_more_classes_than_the_kernel_holds_take_the_pytorch_path(monkeypatch):
    monkeypatch.setattr(native, "run", lambda *a, **k: pytest.fail("native kernel ran"))
    probabilities = torch.softmax(torch.randn(1, native.MAX_CLASSES + 1, 4, 5), 1)
    q = dense_crf(probabilities, torch.zeros(1, 3, 4, 5, dtype=torch.uint8), "pydensecrf")
    assert torch.allclose(q.sum(1), torch.ones(1, 4, 5), atol=1e-4)
