import numpy as np
import pytest

from poodle.data.synthdrive.flo import FLO_MAGIC, read_flo, write_flo


def test_flo_round_trip_and_layout(tmp_path):
    flow = np.random.default_rng(0).normal(size=(5, 7, 2)).astype(np.float32)
    path = tmp_path / "a.flo"
    write_flo(path, flow)
    raw = path.read_bytes()
    assert np.frombuffer(raw[:4], "<f4")[0] == np.float32(FLO_MAGIC)
    assert tuple(np.frombuffer(raw[4:12], "<i4")) == (7, 5)  # width, then height
    assert len(raw) == 12 + 5 * 7 * 2 * 4
    # Row-major, interleaved (dx, dy): the first two floats are pixel (0, 0).
    assert np.allclose(np.frombuffer(raw[12:20], "<f4"), flow[0, 0])
    back = read_flo(path)
    assert back.dtype == np.float32 and back.shape == (5, 7, 2)
    np.testing.assert_array_equal(back, flow)


def test_flo_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="shape"):
        write_flo(tmp_path / "x.flo", np.zeros((4, 4, 3)))
    bad = tmp_path / "bad.flo"
    bad.write_bytes(b"\x00" * 16)
    with pytest.raises(ValueError, match="magic"):
        read_flo(bad)
    short = tmp_path / "short.flo"
    write_flo(short, np.zeros((4, 4, 2), np.float32))
    short.write_bytes(short.read_bytes()[:-8])
    with pytest.raises(ValueError, match="truncated"):
        read_flo(short)
