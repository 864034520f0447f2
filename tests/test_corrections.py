"""Training database of corrected cells (pure Python, no Qt)."""

import numpy as np
import pytest

from napari_tmd_defects.corrections import (
    INDEX_COLUMNS,
    CorrectionDatabase,
    crop_box,
    load_corrections,
    read_index,
)


@pytest.fixture
def image():
    return np.arange(60 * 80, dtype=np.float64).reshape(60, 80)


def test_crop_box_takes_pixels_inside_the_box(image):
    crop = crop_box(image, [10.2, 5.0, 14.9, 8.5])
    assert crop.dtype == np.float32
    assert np.array_equal(crop, image[5:9, 11:15])
    # clipped at the border
    assert crop_box(image, [-3.0, -3.0, 1.0, 1.0]).shape == (2, 2)
    with pytest.raises(ValueError, match="outside"):
        crop_box(image, [100, 100, 110, 110])
    with pytest.raises(ValueError, match="finite"):
        crop_box(image, [5, 5, 1, 1])
    with pytest.raises(ValueError, match="2-D"):
        crop_box(np.zeros((2, 3, 4)), [0, 0, 1, 1])


def test_add_update_and_load(tmp_path, image):
    db = CorrectionDatabase(tmp_path / "db")
    assert db.rows() == [] and len(db) == 0
    row = db.add(image, [10, 10, 20, 18], 3, material="MoTe2", pixel_size=0.09, source="a.tif",
                 confidence_before=0.55, label_before=0, timestamp="2024-01-01T00:00:00+00:00")
    assert row["class_name"] == "V_Mo" and row["crop"].endswith(".npy") and row["normalized"] == 0
    header = (tmp_path / "db" / "index.csv").read_text().splitlines()[0]
    assert header == ",".join(INDEX_COLUMNS)
    crop = np.load(tmp_path / "db" / "crops" / row["crop"])
    assert np.array_equal(crop, crop_box(image, [10, 10, 20, 18]))

    # the same cell again (box moved by a fraction of a pixel): updated, not duplicated;
    # what the classifier said before the first correction is kept
    db.add(image, [10.3, 10.1, 20.3, 18.1], 1, material="MoTe2", pixel_size=0.09, source="a.tif",
           confidence_before=1.0, label_before=3)
    rows = db.rows()
    assert len(rows) == 1 and rows[0]["label"] == 1 and rows[0]["class_name"] == "V_Te1"
    assert rows[0]["label_before"] == 0 and rows[0]["confidence_before"] == pytest.approx(0.55)
    assert rows[0]["crop"] == row["crop"]

    # another cell, and the same box in another image: new rows
    db.add_many(image, [[30, 30, 40, 38], [10, 10, 20, 18]], [2, 5], material="MoS2", source="b.tif",
                normalized=True)
    rows = read_index(tmp_path / "db")
    assert [r["label"] for r in rows] == [1, 2, 5]
    assert rows[1]["class_name"] == "V_S2" and np.isnan(rows[1]["pixel_size_A"]) and rows[1]["label_before"] == -1
    assert [r["normalized"] for r in rows] == [0, 1, 1]
    crops, labels, rows2 = load_corrections(tmp_path / "db")
    assert labels.tolist() == [1, 2, 5] and all(c.ndim == 2 and c.dtype == np.float32 for c in crops)
    assert [r["crop"] for r in rows2] == [r["crop"] for r in rows]
    assert not list((tmp_path / "db").rglob("*.tmp"))


def test_bad_input_writes_nothing(tmp_path, image):
    db = CorrectionDatabase(tmp_path / "db")
    with pytest.raises(ValueError, match="class ids"):
        db.add(image, [1, 1, 5, 5], 7)
    with pytest.raises(ValueError, match="outside"):
        db.add_many(image, [[1, 1, 5, 5], [500, 500, 510, 510]], [1, 1])
    with pytest.raises(ValueError, match="labels"):
        db.add_many(image, [[1, 1, 5, 5]], [1, 2])
    with pytest.raises(ValueError, match="pixel_size"):
        db.add(image, [1, 1, 5, 5], 1, pixel_size=-1)
    assert not (tmp_path / "db").exists()


def test_missing_and_malformed_databases(tmp_path, image):
    with pytest.raises(FileNotFoundError, match="no corrections database"):
        load_corrections(tmp_path)
    db = CorrectionDatabase(tmp_path)
    row = db.add(image, [1, 1, 5, 5], 1)
    (tmp_path / "crops" / row["crop"]).unlink()
    with pytest.raises(FileNotFoundError, match="missing"):
        load_corrections(tmp_path)
    (tmp_path / "index.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="missing columns"):
        read_index(tmp_path)


def test_crop_frame_cuts_a_turned_cell_the_canonical_way_up():
    from napari_tmd_defects.corrections import crop_frame

    img = np.zeros((100, 100), np.float32)
    img[40:60, 30:35] = 1.0  # a vertical bar
    # a frame turned by 90°: its canonical x axis runs down the image
    frame = np.array([[0.0, -10.0, 32.0], [10.0, 0.0, 45.0]])
    crop = crop_frame(img, frame, box=(0.0, -0.5, 1.0, 0.5))
    assert crop.shape == (10, 10)
    assert crop[5].mean() > 0.9 and crop[0].mean() < 0.1  # the bar lies along the crop's rows
    with pytest.raises(ValueError, match="outside"):
        crop_frame(img, np.array([[10.0, 0, 500], [0, 10.0, 500]]))
    with pytest.raises(ValueError, match="frame"):
        crop_frame(img, np.zeros((3, 3)))


def test_revert_undoes_new_updated_and_removed_rows(tmp_path, image):
    db = CorrectionDatabase(tmp_path / "db")
    first = db.add(image, [10, 10, 20, 18], 3, source="a.tif", label_before=0)
    crop = tmp_path / "db" / "crops" / first["crop"]
    before = crop.read_bytes()

    undo_new, undo_update, undo_remove = [], [], []
    db.add_many(image, [[30, 30, 40, 38]], [2], source="a.tif", undo=undo_new)
    db.add_many(image + 1.0, [[10.2, 10, 20.2, 18]], [5], source="a.tif", undo=undo_update)
    assert sorted(r["label"] for r in db.rows()) == [2, 5] and crop.read_bytes() != before
    removed = db.remove_matching("a.tif", [[30, 30, 40, 38], [60, 50, 70, 58]], undo=undo_remove)
    assert [r["label"] for r in removed] == [2] and [r["label"] for r in db.rows()] == [5]

    db.revert(undo_remove)  # the removed row and its crop come back
    assert sorted(r["label"] for r in db.rows()) == [2, 5]
    db.revert(undo_update)  # the first correction again, with its crop
    assert sorted(r["label"] for r in db.rows()) == [2, 3] and crop.read_bytes() == before
    db.revert(undo_new)  # the added row and its crop are gone
    rows = db.rows()
    assert [r["label"] for r in rows] == [3] and rows[0]["label_before"] == 0
    assert sorted(p.name for p in (tmp_path / "db" / "crops").iterdir()) == [first["crop"]]
