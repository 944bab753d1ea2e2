"""The Numba stitcher against a plain per-patch numpy reference, written independently.

The reference places a patch on the canvas pixels whose centres ``(i + 0.5) * ds`` (level-0 px)
fall in ``[x, x + w)``, tested directly on the centres rather than through the ceil formula.
"""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from wsi_ai.errors import InvalidInputError, MissingMppError
from wsi_ai.stitch import Heatmap, canvas_shape, stitch


def reference(x, y, w, h, values, slide_size, ds, blend, sigma=0.25):
    """Per-patch loop: returns (canvas float64 [H, W, C] with NaN outside, coverage [H, W])."""
    vals = np.asarray(values, np.float32).astype(np.float64)
    vals = vals.reshape(len(vals), -1)
    height = int(np.ceil(slide_size[1] / ds))
    width = int(np.ceil(slide_size[0] / ds))
    col_centres = (np.arange(width) + 0.5) * ds
    row_centres = (np.arange(height) + 0.5) * ds
    acc = np.full((height, width, vals.shape[1]), -np.inf if blend == "max" else 0.0)
    wsum = np.zeros((height, width))
    for i in range(len(vals)):
        cols = np.flatnonzero((col_centres >= x[i]) & (col_centres < x[i] + w[i]))
        rows = np.flatnonzero((row_centres >= y[i]) & (row_centres < y[i] + h[i]))
        if cols.size == 0 or rows.size == 0:
            continue
        block = np.ix_(rows, cols)
        if blend == "mean":
            acc[block] += vals[i]
            wsum[block] += 1
        elif blend == "max":
            acc[block] = np.maximum(acc[block], vals[i])
            wsum[block] += 1
        else:
            gx = np.exp(-0.5 * ((col_centres[cols] - (x[i] + w[i] / 2)) / (sigma * w[i])) ** 2)
            gy = np.exp(-0.5 * ((row_centres[rows] - (y[i] + h[i] / 2)) / (sigma * h[i])) ** 2)
            weight = gy[:, None] * gx[None, :]
            acc[block] += weight[..., None] * vals[i]
            wsum[block] += weight
    covered = wsum > 0
    canvas = np.full(acc.shape, np.nan)
    if blend == "max":
        canvas[covered] = acc[covered]
    else:
        canvas[covered] = acc[covered] / wsum[covered][:, None]
    return canvas, covered


def random_patches(rng, n, slide_size, n_ch, integer=False):
    """Heavy overlaps, sizes from sub-pixel to large, some partly or fully off the slide."""
    sw, sh = slide_size
    x = rng.uniform(-0.3 * sw, 1.1 * sw, n)
    y = rng.uniform(-0.3 * sh, 1.1 * sh, n)
    w = rng.uniform(0.5, 0.15 * sw, n)
    h = rng.uniform(0.5, 0.15 * sh, n)
    if integer:
        x, y, w, h = (np.round(a) for a in (x, y, w, h))
    values = rng.normal(size=(n, n_ch)).astype(np.float32)
    return x, y, w, h, values if n_ch > 1 else values[:, 0]


def assert_matches(hm: Heatmap, ref_canvas, ref_cov):
    assert hm.canvas.dtype == np.float32
    assert hm.canvas.shape == ref_canvas.shape
    np.testing.assert_array_equal(np.asarray(hm.coverage), ref_cov)
    canvas = np.asarray(hm.canvas)
    assert np.isnan(canvas[~ref_cov]).all()
    assert not np.isnan(canvas[ref_cov]).any()
    np.testing.assert_allclose(canvas[ref_cov], ref_canvas[ref_cov], rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("blend", ["mean", "max", "gaussian"])
@pytest.mark.parametrize("n_ch", [1, 3])
@pytest.mark.parametrize(
    ("slide_size", "ds", "integer"),
    [((1001, 777), 7.3, False), ((640, 480), 16.0, True), ((97, 131), 1.0, True)],
)
def test_matches_reference_on_random_overlaps(blend, n_ch, slide_size, ds, integer):
    rng = np.random.default_rng([len(blend), n_ch, int(ds * 10)])
    x, y, w, h, values = random_patches(rng, 300, slide_size, n_ch, integer)
    hm = stitch(x, y, w, h, values, slide_size=slide_size, downsample=ds, blend=blend)
    ref_canvas, ref_cov = reference(x, y, w, h, values, slide_size, ds, blend)
    assert_matches(hm, ref_canvas, ref_cov)
    assert 0 < ref_cov.sum() < ref_cov.size  # the case really has holes and coverage
    assert hm.n_patches == 300
    assert hm.blend == blend


@pytest.mark.parametrize("blend", ["mean", "max", "gaussian"])
def test_many_small_patches_across_bands(blend):
    """Thousands of small patches on a wide canvas: many bands, patches crossing band edges."""
    rng = np.random.default_rng(7)
    slide_size = (9001, 3003)
    n = 4000
    x = rng.uniform(-100, 9001, n)
    y = rng.uniform(-100, 3003, n)
    w = rng.uniform(10, 200, n)
    h = rng.uniform(10, 200, n)
    values = rng.random((n, 2)).astype(np.float32)
    hm = stitch(x, y, w, h, values, slide_size=slide_size, downsample=5.5, blend=blend, sigma=0.4)
    ref_canvas, ref_cov = reference(x, y, w, h, values, slide_size, 5.5, blend, sigma=0.4)
    assert_matches(hm, ref_canvas, ref_cov)


def test_placement_rule_by_hand():
    # ds = 4: canvas pixel centres at level-0 2, 6, 10, ...; [2, 6) holds only the centre 2,
    # [3, 11) holds 6 and 10, [6.5, 9.9) holds none.
    hm = stitch(
        [2, 3, 6.5],
        [0, 0, 0],
        [4, 8, 3.4],
        [4, 4, 4],
        [1.0, 2.0, 5.0],
        slide_size=(16, 8),
        downsample=4,
    )
    np.testing.assert_array_equal(hm.coverage, [[1, 1, 1, 0], [0, 0, 0, 0]])
    np.testing.assert_array_equal(hm.canvas[0, :3, 0], [1.0, 2.0, 2.0])
    assert hm.n_placed == 2
    assert canvas_shape((16, 8), 4) == (2, 4)
    assert canvas_shape((17, 8), 4) == (2, 5)


def test_grid_patches_fill_blocks_exactly():
    """A 224-px grid at downsample 56 puts each value in its own 4 x 4 canvas block."""
    n_side = 5
    gx, gy = np.meshgrid(np.arange(n_side) * 224, np.arange(n_side) * 224)
    values = np.arange(n_side * n_side, dtype=np.float32)
    hm = stitch(
        gx.ravel(),
        gy.ravel(),
        224,
        224,
        values,
        slide_size=(224 * n_side, 224 * n_side),
        downsample=56,
    )
    expected = np.kron(values.reshape(n_side, n_side), np.ones((4, 4)))
    np.testing.assert_array_equal(hm.canvas[..., 0], expected)
    assert hm.coverage.all()


def test_max_and_gaussian_semantics():
    x, y, w, h = [0, 8], [0, 0], [16, 16], [16, 16]
    values = [[1.0, -3.0], [4.0, -5.0]]
    hm = stitch(x, y, w, h, values, slide_size=(24, 16), downsample=1, blend="max")
    np.testing.assert_array_equal(hm.canvas[0, 4], [1.0, -3.0])
    np.testing.assert_array_equal(hm.canvas[0, 10], [4.0, -3.0])  # per channel
    np.testing.assert_array_equal(hm.canvas[0, 20], [4.0, -5.0])
    single = stitch(
        [0], [0], [16], [16], [2.5], slide_size=(16, 16), downsample=1, blend="gaussian"
    )
    np.testing.assert_allclose(single.canvas, 2.5, rtol=1e-6)
    both = stitch(x, y, w, h, [0.0, 1.0], slide_size=(24, 16), downsample=1, blend="gaussian")
    # Left of the overlap's middle the first patch weighs more, right of it the second.
    assert both.canvas[8, 9, 0] < 0.5 < both.canvas[8, 14, 0]
    assert both.sigma == 0.25


def test_empty_input_gives_fill_everywhere():
    hm = stitch([], [], [], [], np.zeros((0, 3)), slide_size=(100, 50), downsample=10)
    assert hm.canvas.shape == (5, 10, 3)
    assert np.isnan(hm.canvas).all()
    assert not hm.coverage.any()
    assert hm.n_patches == hm.n_placed == 0


def test_fill_value_and_outside_patches():
    hm = stitch(
        [-500, 1000, 0],
        [0, 0, 0],
        [100, 50, 10],
        [10, 10, 10],
        [1.0, 2.0, 3.0],
        slide_size=(100, 100),
        downsample=10,
        fill_value=-1.0,
    )
    assert hm.n_placed == 1
    assert (hm.canvas[~hm.coverage] == -1.0).all()
    assert hm.canvas[0, 0, 0] == 3.0
    assert hm.coverage.sum() == 1


@pytest.mark.parametrize("blend", ["mean", "max", "gaussian"])
def test_tiled_equals_untiled(blend, tmp_path):
    rng = np.random.default_rng(3)
    slide_size = (3001, 2011)
    x, y, w, h, values = random_patches(rng, 500, slide_size, 3)
    kwargs = {"slide_size": slide_size, "downsample": 9.7, "blend": blend}
    whole = stitch(x, y, w, h, values, **kwargs)
    shape = whole.canvas.shape

    # np.memmap target: written in place, tile by tile, with 1-row bands.
    mm = np.memmap(tmp_path / "canvas.f32", np.float32, "w+", shape=shape)
    mc = np.memmap(tmp_path / "coverage.u8", np.bool_, "w+", shape=shape[:2])
    tiled = stitch(x, y, w, h, values, out=mm, coverage_out=mc, max_memory=50_000, **kwargs)
    assert tiled.canvas is mm and tiled.coverage is mc
    np.testing.assert_array_equal(np.asarray(mm), whole.canvas)
    np.testing.assert_array_equal(np.asarray(mc), whole.coverage)

    # zarr targets: written through slice assignment from a tile buffer.
    z = zarr.zeros(shape, chunks=(15, 128, 3), dtype="f4")
    zc = zarr.zeros(shape[:2], chunks=(15, 128), dtype="bool")
    zt = stitch(x, y, w, h, values, out=z, coverage_out=zc, max_memory=200_000, **kwargs)
    assert zt.canvas is z
    np.testing.assert_array_equal(z[:], whole.canvas)
    np.testing.assert_array_equal(zc[:], whole.coverage)


class RecordingArray:
    """A slice-assignable target that records which row ranges were written."""

    def __init__(self, shape, dtype):
        self.data = np.full(shape, 7, dtype)
        self.shape = shape
        self.writes: list[tuple[int, int]] = []

    def __getitem__(self, key):
        return self.data[key]

    def __setitem__(self, key, value):
        self.writes.append((key.start, key.stop))
        self.data[key] = value


def test_tiled_path_writes_every_row_once():
    rng = np.random.default_rng(11)
    slide_size = (2000, 1500)
    x, y, w, h, values = random_patches(rng, 200, slide_size, 1)
    whole = stitch(x, y, w, h, values, slide_size=slide_size, downsample=10)
    out = RecordingArray(whole.canvas.shape, np.float32)
    cov = RecordingArray(whole.coverage.shape, np.bool_)
    stitch(
        x,
        y,
        w,
        h,
        values,
        slide_size=slide_size,
        downsample=10,
        out=out,
        coverage_out=cov,
        max_memory=20_000,
    )
    assert len(out.writes) > 5
    rows = [r for a, b in out.writes for r in range(a, b)]
    assert rows == list(range(whole.canvas.shape[0]))
    np.testing.assert_array_equal(out.data, whole.canvas)
    np.testing.assert_array_equal(cov.data, whole.coverage)


def test_canvas_too_large_without_out_is_refused():
    with pytest.raises(InvalidInputError, match="pass out="):
        stitch(
            [0], [0], [10], [10], [1.0], slide_size=(10_000, 10_000), downsample=1, max_memory=2**20
        )


def test_mpp_sets_downsample():
    args = ([0, 300], [0, 100], 224, 224, [1.0, 2.0])
    by_mpp = stitch(*args, slide_size=(1000, 600), mpp=8.0, slide_mpp=0.5)
    by_ds = stitch(*args, slide_size=(1000, 600), downsample=16)
    assert by_mpp.downsample == 16 and by_mpp.mpp == 8.0 and by_ds.mpp is None
    np.testing.assert_array_equal(by_mpp.canvas, by_ds.canvas)
    with pytest.raises(MissingMppError):
        stitch(*args, slide_size=(1000, 600), mpp=8.0)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"values": [1.0, np.nan]}, "NaN"),
        ({"x": [0.0, np.inf]}, "x holds"),
        ({"width": [10.0, -1.0]}, ">= 0"),
        ({"y": [0.0, 1.0, 2.0]}, "shape"),
        ({"values": np.zeros((2, 2, 2))}, r"\[N\]"),
        ({"blend": "median"}, "blend"),
        ({"blend": "gaussian", "sigma": 0.01}, "sigma"),
        ({"mpp": 2.0}, "exactly one"),
        ({"downsample": -2.0}, "positive"),
        ({"slide_size": (0, 10)}, "slide_size"),
        ({"out": np.zeros((3, 3, 1), np.float32)}, "out has shape"),
    ],
)
def test_bad_inputs_are_reported(change, message):
    kwargs = {
        "x": [0.0, 5.0],
        "y": [0.0, 5.0],
        "width": [10.0, 10.0],
        "height": [10.0, 10.0],
        "values": [1.0, 2.0],
        "slide_size": (20, 20),
        "downsample": 2.0,
    }
    kwargs.update(change)
    with pytest.raises(InvalidInputError, match=message):
        stitch(**kwargs)
